"""The built-in PII detectors behind ``runtime/redaction.py``: a cheap candidate regex per kind,
then a validator in Python (Luhn, IBAN mod-97, octet ranges, phone formats).

Guarantees:
* Every candidate regex runs in time linear in the text: no nested quantifiers, bounded
  repetitions, and a look-behind that lets a candidate start only at a token boundary, so a
  hostile text (a megabyte of digits, dots, colons or ``a@``) costs a bounded amount per char.
* Validators see only a bounded candidate (at most a few dozen characters) and try at most a
  handful of its prefixes (cut at separators) when the candidate ran on into following text.
* Precision first: a bare number is a phone number only in a recognised format or after a
  phone word ("call", "tel", ...); dates, prices, version strings, ids and years are not.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

EMAIL, PHONE, CARD, IBAN, IP = "EMAIL", "PHONE", "CARD", "IBAN", "IP"
BUILTIN_KINDS = (EMAIL, PHONE, CARD, IBAN, IP)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


# --- validators -------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits holds."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Lengths of the IBANs of the countries that issue them (ISO 13616 registry, common subset);
# an unknown country code needs a length within the standard's 15..34.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(compact: str) -> bool:
    """``compact`` (upper case, no spaces) is an IBAN: its country's length and mod 97 == 1."""
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None and not 15 <= len(compact) <= 34:
        return False
    if expected is not None and len(compact) != expected:
        return False
    if not compact[2:4].isdigit() or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    remainder = 0
    for char in rearranged:
        value = int(char, 36)  # digits 0-9, letters A=10 .. Z=35
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
    return remainder == 1


def _prefixes(candidate: str, separators: str, limit: int = 8) -> Iterator[str]:
    """The candidate, then shorter prefixes cut before a separator run, longest first."""
    yield candidate
    cuts = [i for i in range(len(candidate) - 1, 0, -1) if candidate[i] in separators]
    for cut in cuts[:limit]:
        prefix = candidate[:cut].rstrip(separators)
        if prefix:
            yield prefix


# --- candidates -------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9-])"
)
# Not inside a longer run of digit groups (an IBAN's "DE12 3456 ..."), not continued by one.
_GROUPED = r"(?<![A-Z0-9]{2}\d\d )"
_CARD = re.compile(r"(?<![\w.,+#-])" + _GROUPED + r"\d(?:[ -]?\d){12,18}(?!\w|[ -]\d{3})")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{2,45}(?![\w:])")
_PHONE = re.compile(r"(?<![\w+(.,/#-])" + _GROUPED + r"(?:\+|\(\+?)?\d[\d ().-]{5,22}\d(?![\w])")

_NANP = re.compile(r"(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}")
_TRUNK = re.compile(r"\(?0\d{1,4}\)?(?:[ .-]\d{2,6}){1,4}")
_INTL = re.compile(r"(?:\+|00)\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}")
_BARE = re.compile(r"\d{7,13}|\d{2,5}(?: \d{2,5}){1,4}|\d{3}[.-]\d{4}")  # after a phone word only
_EXTENSION = re.compile(r",? ?(?:ext\.?|x|extension) ?\d{1,5}\b", re.I)
_PHONE_WORDS = re.compile(
    r"(?:phone|tel|telephone|call|mobile|cell|whatsapp|fax|sms|text|ring|reach)\b[^\d\n(]{0,12}$",
    re.I,
)


def _card(text: str, start: int, raw: str) -> int | None:
    for candidate in _prefixes(raw, " -", limit=4):
        digits = candidate.replace(" ", "").replace("-", "")
        if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
            continue
        separators = {c for c in candidate if c in " -"}
        if len(separators) > 1 or len(set(digits)) == 1:
            continue
        if separators:  # grouped like a card: 4-4-4-4(-3), 4-6-5, 4-6-4
            groups = [len(g) for g in re.split(r"[ -]", candidate)]
            if groups[0] != 4 or min(groups) < 3:
                continue
        if luhn_ok(digits):
            return start + len(candidate)
    return None


def _iban(text: str, start: int, raw: str) -> int | None:
    for candidate in _prefixes(raw, " ", limit=10):
        if iban_ok(candidate.replace(" ", "")):
            return start + len(candidate)
    return None


def _ipv4(text: str, start: int, raw: str) -> int | None:
    octets = raw.split(".")
    if all(int(o) <= 255 and (o == "0" or not o.startswith("0")) for o in octets):
        return start + len(raw)
    return None


def _ipv6(text: str, start: int, raw: str) -> int | None:
    for end in range(len(raw), 1, -1):  # a sentence's full stop or colon may follow it
        candidate = raw[:end]
        if candidate[-1] in ".:" and not candidate.endswith("::"):
            continue
        if candidate.count(":") < 2 or sum(c not in ":." for c in candidate) < 3:
            return None
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            if end < len(raw) - 4:
                return None
            continue
        return start + end
    return None


def _phone(text: str, start: int, raw: str) -> int | None:
    end = _phone_end(text, start, raw)
    if end is not None and (extension := _EXTENSION.match(text, end)) is not None:
        return extension.end()
    return end


def _phone_end(text: str, start: int, raw: str) -> int | None:
    context = _PHONE_WORDS.search(text, max(0, start - 24), start) is not None
    for candidate in _prefixes(raw, " ().-", limit=6):
        digits = sum(c.isdigit() for c in candidate)
        if candidate.count("(") != candidate.count(")"):
            continue
        if candidate.startswith(("+", "(+")) or candidate.startswith("00"):
            international = digits - (2 if candidate.startswith("00") else 0)
            if 8 <= international <= 15 and _INTL.fullmatch(candidate.replace("(+", "+")):
                return start + len(candidate)
            continue
        if _NANP.fullmatch(candidate) or (
            candidate.lstrip("(").startswith("0")
            and 10 <= digits <= 11
            and _TRUNK.fullmatch(candidate)
        ):
            return start + len(candidate)
        if context and 7 <= digits <= 13 and _BARE.fullmatch(candidate):
            return start + len(candidate)
    return None


def _email(text: str, start: int, raw: str) -> int | None:
    return start + len(raw)


# (text, the candidate's start, the candidate) -> the end of the accepted span, or None
Validator = Callable[[str, int, str], int | None]
# (kind, candidate regex, validator, whether a rejected candidate is searched again from its
# next token, what a text must contain for the kind to be there at all), in priority order:
# when spans overlap, the longer wins, then the earlier kind here.
DETECTORS: tuple[tuple[str, re.Pattern[str], Validator, bool, str], ...] = (
    (EMAIL, _EMAIL, _email, False, "@"),
    (IBAN, _IBAN, _iban, True, "digit"),
    (CARD, _CARD, _card, True, "digit"),
    (IP, _IPV6, _ipv6, True, ":"),
    (IP, _IPV4, _ipv4, True, "digit"),
    (PHONE, _PHONE, _phone, True, "digit"),
)
_DIGIT = re.compile(r"\d")
SHORTEST = 5  # no built-in kind fits in fewer characters ("a::bc"; "a@b.co", "1.1.1.1")
# Rejected candidates looked into again per detector and text: enough for any real text, and a
# bound on the work a hostile one (half a million near-misses) can cause.
RETRIES = 2000
PRIORITY = {kind: i for i, kind in enumerate(BUILTIN_KINDS)}


def builtin_spans(text: str, kinds: frozenset[str]) -> list[Span]:
    """Every validated span of the enabled built-in ``kinds`` in ``text`` (may overlap). A
    phone candidate stops where a span of another kind starts: "+44 20 7946 0958 4111 1111
    1111 1111" is a phone number then a card, not one long phone number."""
    spans: list[Span] = []
    if len(text) < SHORTEST:
        return spans
    present = {"@": "@" in text, ":": ":" in text, "digit": _DIGIT.search(text) is not None}
    for kind, pattern, validate, look_inside, needs in DETECTORS:
        if kind not in kinds or not present[needs]:
            continue
        starts = sorted(s.start for s in spans) if kind == PHONE else []
        position, retries = 0, RETRIES
        while (match := pattern.search(text, position)) is not None:
            start, raw = match.start(), match.group()
            if starts:
                after = bisect.bisect_right(starts, start)
                if after < len(starts) and starts[after] < match.end():
                    raw = raw[: starts[after] - start].rstrip(" ().-")
            end = validate(text, start, raw) if raw else None
            if end is not None:
                spans.append(Span(start, end, kind))
                position = end
            elif look_inside and retries:
                # a rejected candidate may hide a valid one starting inside it
                retries -= 1
                position = _next_start(text, start, match.end(), kind == PHONE)
            else:  # hostile text: past the budget, a rejected candidate is passed over whole
                position = match.end()
    return spans


def _next_start(text: str, start: int, end: int, after_word: bool = False) -> int:
    """Where to look again after a rejected candidate text[start:end]: the next token inside it
    (after a separator), else its end; with ``after_word``, only a token whose previous
    non-blank character is not a digit, '.' or '-' (a phone number does not start in the middle
    of a run of digit groups). Each character is passed over a bounded number of times, since a
    candidate is at most a few dozen characters long."""
    for i in range(start + 1, end):
        if text[i - 1].isalnum() or not (text[i].isalnum() or text[i] in "(+"):
            continue
        if after_word:
            before = text[start:i].rstrip()
            if not before or before[-1].isdigit() or before[-1] in ".-":
                continue
        return i
    return end


def resolve(spans: list[Span], priority: dict[str, int]) -> list[Span]:
    """Non-overlapping spans, left to right, covering every character of every span given
    (overlapping spans merge, so no part of a detected span is ever left out); a merged span
    takes the kind of its longest part, ties going to the highest priority (lowest number)."""
    ordered = sorted(spans, key=lambda s: (s.start, -(s.end - s.start), priority.get(s.kind, 99)))
    kept: list[Span] = []
    for span in ordered:
        if kept and span.start < kept[-1].end:
            last = kept[-1]
            longer = span.end - span.start > last.end - last.start
            kept[-1] = Span(last.start, max(last.end, span.end), span.kind if longer else last.kind)
            continue
        kept.append(span)
    return kept
