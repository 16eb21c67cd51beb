"""PII redaction (runtime/redaction.py): each kind, hard negatives, the validators, policies,
custom patterns, hostile input, and the event-level functions the stream and sink use."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from rim.judges import FormatJudge, ReferenceMatchJudge
from runtime.redaction import (
    DROPPED,
    SHORT_TEXT_CHARS,
    SHORT_TEXTS_KEPT,
    RedactionConfig,
    Redactor,
    load_redaction_config,
)
from runtime.redaction_detectors import iban_ok, luhn_ok
from runtime.redaction_events import (
    redact_dead_letter,
    redact_feedback,
    redact_interaction,
    redact_scored_trace,
)
from schemas.codec import AvroCodec
from schemas.configfile import ConfigError
from schemas.deadletter import make_dead_letter
from schemas.models import FeedbackEvent, InteractionEvent, JudgeScore, ScoredTrace
from schemas.topics import FEEDBACK, INTERACTIONS
from tests.factories import interaction

R = Redactor()


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to jane.doe+news@example.co.uk today", "EMAIL"),
        ("ME@EXAMPLE.ORG", "EMAIL"),
        ("call +44 20 7946 0958 now", "PHONE"),
        ("ring +1 (415) 555-2671", "PHONE"),
        ("office (212) 555-0142", "PHONE"),
        ("cell 415.555.2671.", "PHONE"),
        ("UK mobile 07700 900123", "PHONE"),
        ("Paris 01 42 68 53 00", "PHONE"),
        ("0049 30 12345678 is Berlin", "PHONE"),
        ("call me at 4155552671", "PHONE"),
        ("card 4111 1111 1111 1111 expires", "CARD"),
        ("card 5500-0000-0000-0004", "CARD"),
        ("amex 3782 822463 10005", "CARD"),
        ("visa 4012888888881881", "CARD"),
        ("IBAN DE89 3704 0044 0532 0130 00", "IBAN"),
        ("GB82WEST12345698765432", "IBAN"),
        ("FR1420041010050500013M02606", "IBAN"),
        ("host 192.168.0.1 down", "IP"),
        ("from 8.8.8.8.", "IP"),
        ("v6 2001:db8::8a2e:370:7334 up", "IP"),
        ("link fe80::1ff:fe23:4567:890a.", "IP"),
        ("mapped ::ffff:10.0.0.1", "IP"),
    ],
)
def test_each_kind_is_found_and_replaced(text: str, kind: str) -> None:
    result = R.redact(text)
    assert result.counts == {kind: 1}, result
    assert f"<{kind}>" in result.text


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 42.",
        "Order #123456789012 shipped on 2026-11-27.",
        "It costs $1,299.00 or 1 299,00 EUR.",
        "Released in 1999, 2004 and 2019.",
        "Upgrade to version 2.14.1 or build 10.0.19045.2965.",
        "Card 4111 1111 1111 1112 fails Luhn.",
        "1234567812345678 is an order id",
        "IBAN DE89 3704 0044 0532 0130 01 has a bad check.",
        "999.1.1.1 is not an address, nor is 256.0.0.1",
        "meet at 12:30:45, ratio 3:2, std::vector",
        "Tracking 1Z999AA10123456784 arrives",
        "Invoice INV-2026-000123 due 27.11.2026",
        "Dial extension 4521",
        "Population 8 336 817 in 2020",
    ],
)
def test_hard_negatives_are_left_alone(text: str) -> None:
    assert R.redact(text).text == text


def test_luhn_and_iban_validators() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok("378282246310005")
    assert iban_ok("DE89370400440532013000")
    assert not iban_ok("DE89370400440532013001")  # check digits off
    assert not iban_ok("DE8937040044053201300")  # Germany's length is 22
    assert iban_ok("NO9386011117947")


def test_several_kinds_in_one_text_and_counts() -> None:
    text = "a@b.io, b@c.io, +33 6 12 34 56 78, 10.0.0.1 and 4111-1111-1111-1111"
    result = R.redact(text)
    assert result.counts == {"EMAIL": 2, "PHONE": 1, "IP": 1, "CARD": 1}
    assert result.text == "<EMAIL>, <EMAIL>, <PHONE>, <IP> and <CARD>"


def test_policies_off_mask_drop_per_agent() -> None:
    config = RedactionConfig(agents={"open": "off", "secret": "drop"})
    redactor = Redactor(config)
    text = "mail x@y.com"
    assert redactor.redact(text, "open").text == text
    assert redactor.redact(text, "other").text == "mail <EMAIL>"
    dropped = redactor.redact(text, "secret")
    assert dropped.text == "<REDACTED>" and dropped.counts == {DROPPED: 1}
    assert redactor.redact("", "secret").text == ""


def test_short_texts_are_scanned_once_and_the_memory_of_them_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redactor = Redactor()
    scans: list[str] = []
    scan = redactor.spans
    monkeypatch.setattr(redactor, "spans", lambda text: scans.append(text) or scan(text))
    for _ in range(3):
        assert redactor.redact("mail x@y.com").text == "mail <EMAIL>"
        assert redactor.redact("mail x@y.com").counts == {"EMAIL": 1}
    assert scans == ["mail x@y.com"]
    long = "x@y.com " * (SHORT_TEXT_CHARS // 8 + 1)  # long texts are scanned every time
    redactor.redact(long), redactor.redact(long)
    assert scans.count(long) == 2
    for i in range(SHORT_TEXTS_KEPT + 1):
        redactor.redact(f"text {i}")
    assert len(redactor._short) <= SHORT_TEXTS_KEPT
    assert redactor.redact("mail x@y.com", policy="drop").counts == {DROPPED: 1}


def test_yaml_config_custom_patterns_and_bare_off(tmp_path: Path) -> None:
    (tmp_path / "redaction.yaml").write_text(
        "agents:\n  a1: off\n  a2: drop\npatterns:\n"
        "  - kind: TICKET\n    pattern: 'TCK-\\d{5}'\n"
        "  - kind: CODENAME\n    pattern: 'project (?:falcon|osprey)'\n    ignore_case: true\n"
    )
    config = load_redaction_config(tmp_path)
    assert config.agents == {"a1": "off", "a2": "drop"}
    redactor = Redactor(config)
    result = redactor.redact("TCK-12345 is PROJECT Falcon, ask a@b.com")
    assert result.text == "<TICKET> is <CODENAME>, ask <EMAIL>"
    assert load_redaction_config(tmp_path / "nowhere").default_policy == "mask"
    assert (Path(__file__).parent.parent / "configs" / "redaction.yaml").is_file()
    load_redaction_config(Path(__file__).parent.parent / "configs")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [("'(unclosed'", "BAD"), ("'(a+)+$'", "nested"), ("'x*'", "empty")],
)
def test_a_bad_pattern_is_a_one_line_error_naming_it(
    tmp_path: Path, pattern: str, says: str
) -> None:
    (tmp_path / "redaction.yaml").write_text(f"patterns:\n  - kind: BAD\n    pattern: {pattern}\n")
    with pytest.raises(ConfigError) as error:
        load_redaction_config(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "BAD" in message and says in message


def test_hostile_inputs_finish_fast_and_fail_closed() -> None:
    rng = random.Random(3)
    noise = "".join(rng.choice("0123456789 .-:@+()aA") for _ in range(1_000_000))
    for text in (noise, "1" * 1_000_000, "a@" * 500_000, "1 " * 500_000, ":" * 1_000_000):
        start = time.perf_counter()
        R.redact(text)
        assert time.perf_counter() - start < 10  # linear: about a second each on a slow core
    tiny = Redactor(RedactionConfig(max_chars=100))
    assert tiny.redact("x" * 101).text == "<REDACTED>"
    assert R.redact(None).text == ""
    assert R.redact(b"mail a@b.com \xff").text == "mail <EMAIL> \ufffd"
    with pytest.raises(TypeError):
        R.redact(12345)  # type: ignore[arg-type]


def test_a_slow_custom_pattern_times_out_closed() -> None:
    config = RedactionConfig.model_validate(
        {"patterns": [{"kind": "SLOW", "pattern": r"(?:[a-z,]*,){10}Y"}], "pattern_timeout_s": 0.05}
    )
    result = Redactor(config).redact("Y" + "a," * 300)
    assert result.text == "<REDACTED>"


def test_redacting_twice_changes_nothing_more() -> None:
    once = R("a@b.com, +44 20 7946 0958, 4111 1111 1111 1111, DE89370400440532013000 1.2.3.4")
    assert R(once) == once


def test_events_are_redacted_field_by_field_without_mutation() -> None:
    event = interaction(random.Random(1), "agent-x")
    event = event.model_copy(
        update={
            "task_input": "I am a@b.com",
            "final_answer": "call +44 20 7946 0958",
            "metadata": {"atlas.after_revision": "3", "note": "ip 10.1.2.3"},
        }
    )
    redacted, counts = redact_interaction(R, event)
    assert redacted.task_input == "I am <EMAIL>" and event.task_input == "I am a@b.com"
    assert redacted.final_answer == "call <PHONE>"
    assert redacted.metadata == {"atlas.after_revision": "3", "note": "ip <IP>"}
    assert counts == {"EMAIL": 1, "PHONE": 1, "IP": 1}

    trace = ScoredTrace(
        trace_id=event.trace_id,
        agent_id=event.agent_id,
        revision=1,
        interaction=event,
        reward=0.5,
        judge_scores=[JudgeScore(judge="j", score=0.5, rationale="user a@b.com asked")],
        rationale="quoting a@b.com",
        errors=["bad value 4111 1111 1111 1111"],
    )
    out, _ = redact_scored_trace(R, trace)
    dumped = out.model_dump_json()
    assert "a@b.com" not in dumped and "7946" not in dumped and "4111" not in dumped

    feedback = FeedbackEvent(
        trace_id=event.trace_id,
        kind="edit",
        edited_text="reach me on a@b.com",
        comment="or 07700 900123",
        user_id="u@corp.com",
    )
    cleaned, _ = redact_feedback(R, feedback)
    assert (cleaned.edited_text, cleaned.comment, cleaned.user_id) == (
        "reach me on <EMAIL>",
        "or <PHONE>",
        "<EMAIL>",
    )
    dropping = Redactor(RedactionConfig(default_policy="drop"))
    dropped, _ = redact_feedback(dropping, feedback)
    assert dropped.edited_text == "<REDACTED>" and dropped.user_id == "<EMAIL>"


def test_dead_letters_keep_a_decodable_redacted_original() -> None:
    codec = AvroCodec()
    event = interaction(random.Random(2), "agent-y").model_copy(
        update={"task_input": "mail a@b.com"}
    )

    def letter(topic: str, original: bytes, reason: str = "bad") -> object:
        return make_dead_letter(
            source_topic=topic,
            source_partition=0,
            source_offset=1,
            key=b"k",
            original=original,
            reason=reason,
            error_type="X",
            processor="rewards",
        )

    decodable, _ = redact_dead_letter(R, letter(INTERACTIONS, codec.encode(event)), codec)
    assert codec.decode(decodable.original, type(event)).task_input == "mail <EMAIL>"
    garbage = b"\x00\x01junk a@b.com \xff\xfe"
    raw, counts = redact_dead_letter(R, letter(FEEDBACK, garbage, "value a@b.com invalid"), codec)
    assert raw.original == b"\x00\x01junk <EMAIL> \xff\xfe"
    assert raw.reason == "value <EMAIL> invalid" and counts == {"EMAIL": 2}


def test_the_processor_publishes_redacted_traces_and_judges_see_raw_text() -> None:
    from rim.reward import Rim
    from streams.processor import RewardProcessor

    seen: list[str] = []
    rim = Rim([ReferenceMatchJudge(), FormatJudge()])
    judge_many = rim.judge_many

    def judging(events: list[InteractionEvent]) -> object:
        seen.extend(e.task_input for e in events)
        return judge_many(events)

    rim.judge_many = judging  # type: ignore[method-assign]
    processor = RewardProcessor(rim, redactor=Redactor())
    event = interaction(random.Random(4), "agent-z").model_copy(
        update={"task_input": "I am a@b.com; 2+2?", "final_answer": "4, card 4111 1111 1111 1111"}
    )
    judgement = processor.judge([event])[0]
    outcome = processor.on_interaction(event, None, judgement)
    assert seen == ["I am a@b.com; 2+2?"]  # the judges saw the raw text
    assert outcome.scored is not None
    assert outcome.scored.interaction.task_input == "I am <EMAIL>; 2+2?"
    assert outcome.scored.interaction.final_answer == "4, card <CARD>"
    assert processor.redacted == {"EMAIL": 1, "CARD": 1}
    edit = FeedbackEvent(trace_id=event.trace_id, kind="edit", edited_text="4 (b@c.io)")
    merged = processor.on_feedback(edit, outcome.state)
    assert merged.scored is not None and "a@b.com" not in merged.scored.model_dump_json()
    [published] = processor.published_feedback(merged.state.feedback)
    assert published.edited_text == "4 (<EMAIL>)"
    assert merged.state.feedback[0].edited_text == "4 (b@c.io)"  # the state keeps it raw


def test_the_producer_redacts_before_encoding() -> None:
    import socket

    from runtime.producer import EventProducer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    producer = EventProducer(
        {"bootstrap.servers": f"127.0.0.1:{port}", "log_level": "0"}, redact=Redactor()
    )
    sent = producer.record_feedback("t1", "edit", edited_text="mail a@b.com", agent_id="a")
    assert sent.edited_text == "mail <EMAIL>" and producer.redacted == {"EMAIL": 1}
    producer._producer.purge()
