"""Signed prompt versions and checkpoints against the real broker: an agent's subscriber that
has the learner's public key switches to signed versions only; an unsigned (forged) one, one
signed by another key, a signed value replayed under another agent's key, and an unsigned
tombstone are each refused with a log line, and the current version stays."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from consumers.jobs import TransactionalProducer
from runtime.checkpoints import CheckpointFollower
from runtime.prompts import PromptSubscriber, StaticPrompts
from schemas.codec import AvroCodec
from schemas.models import CheckpointEvent, PromptVersion
from schemas.signing import create_keys, load_verifier
from schemas.topics import PROMPTS, key_of


def _version(agent: str, version: int, text: str) -> PromptVersion:
    return PromptVersion(agent_id=agent, role="student", version=version, text=text, source="gepa")


def _settle(subscriber: PromptSubscriber, refused: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while subscriber.refused < refused and time.monotonic() < deadline:
        time.sleep(0.2)
    assert subscriber.refused == refused, f"{subscriber.refused} refused, not {refused}"


def test_agents_switch_only_to_versions_the_learner_signed(
    kafka_config: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    learner = create_keys(tmp_path / "learner")
    intruder = create_keys(tmp_path / "intruder")
    verifier = load_verifier(None, tmp_path / "learner")
    codec = AvroCodec()
    agent = f"signed-{uuid.uuid4().hex[:6]}"
    signed = TransactionalProducer(kafka_config, f"t-{uuid.uuid4().hex}", codec, learner)
    unsigned = TransactionalProducer(kafka_config, f"t-{uuid.uuid4().hex}", codec)
    wrong_key = TransactionalProducer(kafka_config, f"t-{uuid.uuid4().hex}", codec, intruder)
    subscriber = PromptSubscriber(
        kafka_config, StaticPrompts({"student": "seed", "teacher": "seed"}), verifier=verifier
    ).start()
    caplog.set_level(logging.ERROR, logger="runtime.follow")
    before = subscriber.refused  # earlier tests' unsigned versions, replayed at start
    try:
        signed.send([_version(agent, 1, "signed by the learner")])
        assert subscriber.wait_for(agent, "student", 1, timeout=30)

        unsigned.send([_version(agent, 2, "forged: no signature")])
        _settle(subscriber, before + 1)
        wrong_key.send([_version(agent, 3, "forged: another key")])
        _settle(subscriber, before + 2)
        # a valid signed message copied under another agent's key, and an unsigned tombstone
        replay = Producer(kafka_config)
        other = f"signed-{uuid.uuid4().hex[:6]}"
        value = codec.encode(_version(other, 9, "replayed"))
        header = learner.header(PROMPTS, key_of(_version(agent, 9, "x")), value)
        replay.produce(
            PROMPTS, key=key_of(_version(other, 9, "replayed")), value=value, headers=[header]
        )
        replay.produce(PROMPTS, key=key_of(_version(agent, 9, "x")), value=None)
        replay.flush(10)
        _settle(subscriber, before + 4)

        current = subscriber.snapshot(agent)["student"]
        assert (current.version, current.text) == (1, "signed by the learner")
        assert subscriber.snapshot(other)["student"].text == "seed"
        signed.send([_version(agent, 4, "signed again")])
        assert subscriber.wait_for(agent, "student", 4, timeout=30)
    finally:
        subscriber.close()
    reasons = [
        r.getMessage()
        for r in caplog.records
        if f"{agent}/" in r.getMessage() or f"{other}/" in r.getMessage()
    ]
    print("\n" + "\n".join(reasons))
    assert (
        sum("unsigned (no atlas-signature header)" in r for r in reasons) == 2
    )  # forged, tombstone
    assert sum("does not verify" in r for r in reasons) == 2  # another key, replay
    assert all("keeping the current version" in r for r in reasons)


def test_an_unsigned_checkpoint_is_refused(kafka_config: dict[str, str], tmp_path: Path) -> None:
    learner = create_keys(tmp_path)
    agent = f"signed-{uuid.uuid4().hex[:6]}"
    event = CheckpointEvent(
        agent_id=agent,
        role="student",
        version=1,
        uri="file:///nowhere",
        base_model="m",
        source="grpo",
    )
    TransactionalProducer(kafka_config, f"t-{uuid.uuid4().hex}", AvroCodec()).send([event])
    with CheckpointFollower(kafka_config, verifier=load_verifier(None, tmp_path)).start() as f:
        assert f.refused >= 1 and f.latest(agent, "student") is None
    signed = TransactionalProducer(kafka_config, f"t-{uuid.uuid4().hex}", AvroCodec(), learner)
    signed.send([event.model_copy(update={"version": 2})])
    with CheckpointFollower(kafka_config, verifier=load_verifier(None, tmp_path)).start() as f:
        latest = f.latest(agent, "student")
        assert latest is not None and latest.version == 2
