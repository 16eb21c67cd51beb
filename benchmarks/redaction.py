"""PII redaction on a labelled synthetic set: precision and recall per kind, and its cost.

A seeded generator writes realistic support-desk sentences with planted PII of every kind
(e-mail, phone in international and national formats, Luhn-valid cards, mod-97-valid IBANs,
IPv4/IPv6) and hard negatives that look like PII but are not: order numbers, prices, dates,
times, version strings, ISBNs, years, tracking numbers, 16-digit numbers failing Luhn, IBANs with
a wrong check, 999.1.1.1. Every planted span is known, so scoring is by span:

* true positive: a planted span wholly covered by a detected span of its kind;
* false negative: any other planted span (a partial cover is a miss: part of it leaks);
* false positive: a detected span of a kind that overlaps no planted span of that kind.
"leaked" counts planted spans not wholly covered by a detection of any kind.

Cost: CPU µs per text (mean over every text, several passes, ``time.process_time``: this
process's CPU, so the figures hold on a busy machine too), texts/s and MB/s on one core; and
µs per ScoredTrace for the event-level redaction the reward worker does.

    .venv/bin/python benchmarks/redaction.py [--texts 1000] [--seed 7] [--passes 5]
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from runtime.redaction import Redactor
from runtime.redaction_detectors import BUILTIN_KINDS, Span, luhn_ok
from runtime.redaction_events import redact_scored_trace
from tests.factories import interaction, scored

FIRST = ["anna", "li", "omar", "jean-paul", "sofia", "k", "mohammed", "ewa", "tom", "yuki"]
LAST = ["smith", "garcia", "nguyen", "o.brien", "kowalski", "müller", "ito", "dupont", "lee"]
DOMAINS = ["example.com", "mail.co.uk", "corp.example.org", "uni-bonn.de", "shop.io", "x.fr"]


def email(rng: random.Random) -> str:
    local = rng.choice(
        [
            f"{rng.choice(FIRST)}.{rng.choice(LAST)}",
            f"{rng.choice(FIRST)}{rng.randint(1, 99)}",
            f"{rng.choice(FIRST)}+{rng.choice(['news', 'shop', 'x'])}",
            f"{rng.choice(FIRST)}_{rng.choice(LAST)}",
        ]
    )
    local = local.replace("ü", "u")
    address = f"{local}@{rng.choice(DOMAINS)}"
    return address.upper() if rng.random() < 0.1 else address


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def phone(rng: random.Random) -> str:
    d = lambda n: digits(rng, n)  # noqa: E731
    area = str(rng.randint(201, 989))
    return rng.choice(
        [
            f"+44 20 {d(4)} {d(4)}",
            f"+1 ({area}) {d(3)}-{d(4)}",
            f"+1 {area} {d(3)} {d(4)}",
            f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"+49 30 {d(8)}",
            f"+49{rng.randint(151, 179)}{d(8)}",
            f"({area}) {d(3)}-{d(4)}",
            f"{area}-{d(3)}-{d(4)}",
            f"{area}.{d(3)}.{d(4)}",
            f"07{d(3)} {d(6)}",
            f"020 {d(4)} {d(4)}",
            f"0{rng.randint(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}",
            f"0049 89 {d(7)}",
            f"+44 (0)20 {d(4)} {d(4)}",  # harder formats, not all covered
            f"+1-{area}-{d(3)}-{d(4)}",
            f"{d(3)}-{d(4)}",
            f"+44 7{d(3)} {d(6)} ext. {d(3)}",
        ]
    )


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + digits(rng, length - len(prefix) - 1)
    for check in string.digits:
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def group(number: str, sizes: list[int], sep: str) -> str:
    parts, at = [], 0
    for size in sizes:
        parts.append(number[at : at + size])
        at += size
    return sep.join(p for p in parts if p)


def card(rng: random.Random, valid: bool = True) -> str:
    prefix, length, sizes = rng.choice(
        [("4", 16, [4, 4, 4, 4]), ("5", 16, [4, 4, 4, 4]), ("37", 15, [4, 6, 5]),
         ("6011", 16, [4, 4, 4, 4]), ("2221", 16, [4, 4, 4, 4])]
    )  # fmt: skip
    number = luhn_complete(prefix, length, rng)
    if not valid:  # change the check digit: Luhn fails
        number = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    return group(number, sizes, rng.choice([" ", "-", ""]))


IBAN_SHAPES = {"DE": 18, "GB": 18, "FR": 23, "NL": 14, "ES": 20, "IT": 23, "BE": 12, "CH": 17}


def iban(rng: random.Random, valid: bool = True) -> str:
    country = rng.choice(sorted(IBAN_SHAPES))
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        bban += digits(rng, IBAN_SHAPES[country] - 4)
    elif country == "IT":
        bban = rng.choice(string.ascii_uppercase) + digits(rng, IBAN_SHAPES[country] - 1)
    else:
        bban = digits(rng, IBAN_SHAPES[country])
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = (check + rng.randint(1, 96)) % 97 or 1
    compact = f"{country}{check:02d}{bban}"
    return (
        " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
        if rng.random() < 0.5
        else compact
    )


def ip(rng: random.Random) -> str:
    if rng.random() < 0.65:
        return ".".join(str(rng.randint(0, 255)) for _ in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return ":".join(groups)
    return f"{groups[0]}:{groups[1]}::{groups[6]}:{groups[7]}"


MAKERS = {"EMAIL": email, "PHONE": phone, "CARD": card, "IBAN": iban, "IP": ip}
LEADS = {
    "EMAIL": ["my email is", "write to", "contact", "cc", "send it to"],
    "PHONE": ["call me on", "my number is", "reach me at", "phone:", "or try"],
    "CARD": ["my card", "charged to", "card number", "the visa", "paid with"],
    "IBAN": ["refund to IBAN", "account", "transfer to", "IBAN:", "bank details"],
    "IP": ["from IP", "the server at", "logged in from", "host", "blocked address"],
}


def negative(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: f"order #{digits(rng, rng.choice([6, 8, 10, 12]))}",
            lambda: f"order number {rng.randint(10**7, 10**12)}",
            lambda: f"${rng.randint(1, 9)},{digits(rng, 3)}.{digits(rng, 2)}",
            lambda: f"{rng.randint(1, 999)}.{digits(rng, 2)} EUR",
            lambda: f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            lambda: f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)}",
            lambda: f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(1990, 2030)}",
            lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
            lambda: f"version {rng.randint(0, 20)}.{rng.randint(0, 40)}.{rng.randint(0, 99)}",
            lambda: f"build 10.0.{rng.randint(17000, 22999)}.{rng.randint(1000, 9999)}",
            lambda: (
                f"ISBN 978-{rng.randint(0, 9)}-{digits(rng, 2)}-{digits(rng, 6)}-{digits(rng, 1)}"
            ),
            lambda: f"in {rng.randint(1950, 2030)}",
            lambda: f"{rng.randint(2, 500)} items",
            lambda: f"tracking 1Z{digits(rng, 3)}AA{digits(rng, 10)}",
            lambda: card(rng, valid=False),
            lambda: f"IBAN {iban(rng, valid=False)}",
            lambda: "999.1.1.1",
            lambda: f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.1",
            lambda: f"ticket {rng.randint(1000, 99999)}",
            lambda: f"{digits(rng, 16)}",  # an id: Luhn-valid one time in ten
            lambda: "the answer is 42",
        ]
    )()


FILLERS = [
    "Hi, I need help with my account.",
    "The app crashed again after the update.",
    "Please refund the duplicate charge.",
    "Thanks for the quick reply yesterday!",
    "I cannot log in since this morning.",
    "Could you check what happened to my delivery?",
    "The invoice shows the wrong amount.",
]


def labelled_text(rng: random.Random) -> tuple[str, list[Span]]:
    """One text and its planted PII spans."""
    parts: list[tuple[str, str | None]] = [(rng.choice(FILLERS), None)]
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        kind = rng.choice(BUILTIN_KINDS)
        parts.append((rng.choice(LEADS[kind]), None))
        value = MAKERS[kind](rng)
        if kind == "IP" and rng.random() < 0.1:  # with a port (not PII): [v6]:port, v4:port
            port = f":{rng.randint(1, 65535)}"
            parts += (
                [("[", None), (value, kind), ("]" + port, None)]
                if ":" in value
                else [
                    (value, kind),
                    (port, None),
                ]
            )
        else:
            parts.append((value, kind))
        parts.append((rng.choice([".", ",", " and", ";", ""]), None))
    for _ in range(rng.randint(1, 3)):
        parts.insert(rng.randint(1, len(parts)), (f"({negative(rng)})", None))
    text, spans = "", []
    for chunk, kind in parts:
        glued = chunk in (".", ",", ";", "") or chunk.startswith(("]", ":")) or text.endswith("[")
        if text and not glued:
            text += " "
        if kind is not None:
            spans.append(Span(len(text), len(text) + len(chunk), kind))
        text += chunk
    return text, spans


def score(texts: list[tuple[str, list[Span]]], redactor: Redactor) -> dict[str, Counter[str]]:
    per: dict[str, Counter[str]] = {k: Counter() for k in BUILTIN_KINDS}
    for text, planted in texts:
        found = redactor.spans(text)
        for p in planted:
            covered = [f for f in found if f.start <= p.start and f.end >= p.end]
            per[p.kind]["tp" if any(f.kind == p.kind for f in covered) else "fn"] += 1
            per[p.kind]["leaked"] += not covered
        for f in found:
            if not any(p.kind == f.kind and p.start < f.end and f.start < p.end for p in planted):
                per[f.kind]["fp"] += 1
    return per


def ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "  -  "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--passes", type=int, default=5, help="timing passes over the set")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    texts = [labelled_text(rng) for _ in range(args.texts)]
    redactor = Redactor()
    per = score(texts, redactor)
    planted = sum(len(s) for _, s in texts)
    print(f"{args.texts} texts (seed {args.seed}), {planted} planted PII spans")
    print(f"{'kind':6} {'planted':>7} {'tp':>5} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}")
    total: Counter[str] = Counter()
    for kind, c in per.items():
        total.update(c)
        print(
            f"{kind:6} {c['tp'] + c['fn']:7d} {c['tp']:5d} {c['fp']:4d} {c['fn']:4d}"
            f" {ratio(c['tp'], c['tp'] + c['fp']):>9} {ratio(c['tp'], c['tp'] + c['fn']):>7}"
        )
    print(
        f"{'all':6} {total['tp'] + total['fn']:7d} {total['tp']:5d} {total['fp']:4d}"
        f" {total['fn']:4d} {ratio(total['tp'], total['tp'] + total['fp']):>9}"
        f" {ratio(total['tp'], total['tp'] + total['fn']):>7}"
        f"   leaked (not covered by any placeholder): {total['leaked']}"
    )
    raw = [t for t, _ in texts]
    chars = sum(map(len, raw))
    started = time.process_time()
    for _ in range(args.passes):
        for text in raw:
            redactor.redact(text)
    elapsed = time.process_time() - started
    n = args.passes * len(raw)
    print(
        f"cost: {elapsed / n * 1e6:.1f} µs per text (mean {chars / len(raw):.0f} chars),"
        f" {n / elapsed:,.0f} texts/s, {chars * args.passes / elapsed / 1e6:.2f} MB/s, one core"
    )
    trace_rng = random.Random(args.seed)
    traces = []
    for text in raw[:500]:
        trace = scored(interaction(trace_rng), trace_rng)
        event = trace.interaction.model_copy(update={"task_input": text})
        traces.append(trace.model_copy(update={"interaction": event}))
    started = time.process_time()
    for _ in range(args.passes):
        for trace in traces:
            redact_scored_trace(redactor, trace)
    elapsed = time.process_time() - started
    print(
        f"event-level: {elapsed / (args.passes * len(traces)) * 1e6:.1f} µs per ScoredTrace"
        " (every free-text field of a trace whose task input is one of the texts)"
    )


if __name__ == "__main__":
    main()
