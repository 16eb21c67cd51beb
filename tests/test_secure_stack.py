"""`atlas up --secure` against the real broker and store: each role does what it must and only
that, clients without (or with wrong) credentials are refused, a client nobody here wrote
(kcat) gets the same answers, and the reward worker (transactional) and the sink (over HTTPS
to the store) score and store traffic that an agent's credentials produced."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AclBindingFilter, AdminClient

from atlas import stack
from atlas.settings import Settings
from consumers.jobs import TransactionalProducer
from runtime.producer import EventProducer
from schemas.codec import AvroCodec
from schemas.models import PromptVersion
from schemas.secrets import read_secret
from schemas.topics import (
    CHECKPOINTS,
    DEADLETTER,
    FEEDBACK,
    INTERACTIONS,
    JOBS,
    MEMORY,
    PROMPTS,
    REWARDS,
    TOPICS,
    TRIGGERS,
)
from store.client import connect
from tests.factories import interaction
from tests.leaks import everything_on, files_under, leaks_of, tables_of
from tests.workers import WorkerProcess, eventually, scored_count

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(home=tmp_path_factory.mktemp("secure-home"))
    stack.up(settings, secure=True)
    try:
        yield settings
    finally:
        stack.down(settings)


def _write(config: dict[str, str], topic: str, timeout: float = 20) -> str:
    """'ok' or the broker's error name for one message to ``topic``."""
    outcome: list[str] = []
    producer = Producer({**config, "log_level": 0, "message.timeout.ms": int(timeout * 1000)})
    producer.produce(
        topic,
        b"probe",
        callback=lambda err, _msg: outcome.append(err.name() if err else "ok"),
    )
    producer.flush(timeout + 5)
    return outcome[0] if outcome else "no answer"


def _read(config: dict[str, str], topic: str, group: str) -> str:
    """'ok' once a consumer of ``group`` (subscribed, so it must join the group) is assigned
    ``topic`` or reads from it, else the broker's error name."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"{group}-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error():
                return message.error().name()
            if message is not None or consumer.assignment():
                return "ok"
        return "no assignment"
    finally:
        consumer.close()


ALLOWED = {  # role: (writes, reads, its consumer group prefix)
    "agent": ([INTERACTIONS, FEEDBACK], [PROMPTS, CHECKPOINTS, MEMORY], "atlas-follow"),
    # PROMPTS: the agents' RIM calibrations (role rim), which reward workers follow
    "rewards": (
        [REWARDS, TRIGGERS, DEADLETTER],
        [INTERACTIONS, FEEDBACK, PROMPTS],
        "atlas-rewards",
    ),
    "sink": ([DEADLETTER], [REWARDS, FEEDBACK, DEADLETTER, JOBS], "atlas-sink"),
    "operator": ([TRIGGERS], [JOBS, PROMPTS], "atlas-follow"),
}
FORBIDDEN_WRITES = {
    "agent": [PROMPTS, CHECKPOINTS, REWARDS, TRIGGERS, MEMORY],
    "rewards": [PROMPTS, CHECKPOINTS, INTERACTIONS],
    "sink": [INTERACTIONS, PROMPTS, REWARDS],
    "operator": [PROMPTS, CHECKPOINTS, INTERACTIONS, REWARDS],
    "learner": [INTERACTIONS, TRIGGERS],
}


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_role_does_what_it_must(secure: Settings, role: str) -> None:
    config = secure.kafka_config(role)
    writes, reads, group = ALLOWED[role]
    assert {t: _write(config, t) for t in writes} == dict.fromkeys(writes, "ok")
    assert {t: _read(config, t, group) for t in reads} == dict.fromkeys(reads, "ok")
    # another role's group is not its own
    assert _read(config, reads[0], "atlas-gepa") == "GROUP_AUTHORIZATION_FAILED"


@pytest.mark.parametrize("role", sorted(FORBIDDEN_WRITES))
def test_no_role_writes_what_it_does_not_own(secure: Settings, role: str) -> None:
    config = secure.kafka_config(role)
    results = {t: _write(config, t, timeout=10) for t in FORBIDDEN_WRITES[role]}
    assert results == dict.fromkeys(FORBIDDEN_WRITES[role], "TOPIC_AUTHORIZATION_FAILED")


def test_the_operator_may_tombstone_a_memory_entry(secure: Settings) -> None:
    """`atlas memory forget`: the operator writes a null value under a memory key (a compacted
    topic refuses messages without a key, so the probes above cannot)."""
    from atlas.commands.memory import publish_tombstone

    key = f"sec-{uuid.uuid4().hex[:6]}/student/{uuid.uuid4().hex}"
    publish_tombstone(secure.kafka_config("operator"), MEMORY, key)  # raises if refused


def test_the_learner_publishes_in_transactions_and_an_agent_cannot(secure: Settings) -> None:
    version = PromptVersion(
        agent_id=f"sec-{uuid.uuid4().hex[:6]}", role="student", version=1, text="t", source="gepa"
    )
    learner = TransactionalProducer(
        secure.kafka_config("learner"), f"atlas-gepa-{uuid.uuid4().hex[:6]}", AvroCodec()
    )
    learner.send([version])
    with pytest.raises(KafkaException, match="TRANSACTIONAL_ID_AUTHORIZATION_FAILED"):
        TransactionalProducer(
            secure.kafka_config("agent"), f"atlas-gepa-{uuid.uuid4().hex[:6]}", AvroCodec()
        )


def test_without_or_with_wrong_credentials_nothing_is_reachable(secure: Settings) -> None:
    good = secure.kafka_config("operator")
    plain = {"bootstrap.servers": good["bootstrap.servers"], "log_level": 0}
    with pytest.raises(KafkaException):
        AdminClient(plain).list_topics(timeout=5)
    reasons: list[str] = []
    wrong = {
        **good,
        "sasl.password": "not-the-password",
        "log_level": 0,
        "error_cb": lambda error: reasons.append(str(error)),
    }
    producer = Producer(wrong)  # its error callback is served by poll()
    deadline = time.monotonic() + 15
    while not reasons and time.monotonic() < deadline:
        producer.poll(0.5)
    assert any("Authentication failed" in r for r in reasons), reasons
    no_tls = {**good, "security.protocol": "SASL_PLAINTEXT", "log_level": 0}
    with pytest.raises(KafkaException):
        AdminClient(no_tls).list_topics(timeout=5)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcat_gets_the_same_answers(secure: Settings, tmp_path: Path) -> None:
    def kcat(role: str, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        config = secure.kafka_config(role)
        options = [f"-X{k}={v}" for k, v in config.items() if k != "bootstrap.servers"]
        return subprocess.run(
            ["kcat", "-b", config["bootstrap.servers"], *options, *args],
            input=data,
            capture_output=True,
            timeout=60,
        )

    listed = kcat("operator", "-L")
    assert listed.returncode == 0 and TRIGGERS.encode() in listed.stdout
    allowed = kcat("agent", "-P", "-t", INTERACTIONS, data=b"from kcat\n")
    assert allowed.returncode == 0, allowed.stderr
    refused = kcat("agent", "-P", "-t", PROMPTS, data=b"forged by kcat\n")
    assert b"authorization failed" in refused.stderr.lower(), refused.stderr


def test_workers_score_and_store_an_agents_traffic(secure: Settings, tmp_path: Path) -> None:
    workers = [
        WorkerProcess(secure, "rewards", tmp_path),
        WorkerProcess(secure, "sink", tmp_path),
    ]
    try:
        agent = f"sec-{uuid.uuid4().hex[:6]}"
        import random

        rng = random.Random(3)
        with EventProducer(secure.kafka_config("agent")) as producer:
            for _ in range(30):
                producer.send(interaction(rng, agent_id=agent))
        target = secure.store()
        assert target.interface == "https" and target.ca_cert
        store = connect(target)
        eventually(
            lambda: scored_count(store, agent) == 30,
            180,
            "30 traces scored by the rewards worker and stored over HTTPS by the sink",
        )
    finally:
        for worker in workers:
            worker.stop()
    logs = "".join(w.log.read_text(errors="replace") for w in workers)
    assert "AUTHORIZATION_FAILED" not in logs and "Authentication failed" not in logs
    # no SASL password, nor the store's, in anything this run wrote
    secrets = [
        read_secret(path).get_secret_value() for path in secure.secrets_dir.glob("*.password")
    ]
    assert len(secrets) == 7  # store, admin, and the five roles
    written = {
        **{f"log {w.log.name}": w.log.read_bytes() for w in workers},
        **files_under(secure.home, skip={"secrets", "store", "kafka"}),
        "every topic": everything_on(secure.kafka_config("admin"), list(TOPICS)),
        **tables_of(store),
    }
    assert not leaks_of(secrets, written), leaks_of(secrets, written)


def test_the_sdk_records_with_the_agent_roles_credentials(secure: Settings) -> None:
    """atlas.sdk configured from the environment alone (ATLAS_HOME of a --secure stack): SASL
    and TLS with the agent role's credentials, prompts followed, no secret in its output."""
    from tests.test_sdk_e2e import run_exiting_agent

    _agent, _seen, stderr = run_exiting_agent(secure, secure.kafka_config("admin"))
    secrets = [
        read_secret(path).get_secret_value() for path in secure.secrets_dir.glob("*.password")
    ]
    assert not leaks_of(secrets, {"stderr": stderr.encode()})


def test_the_acls_are_listed_per_role(secure: Settings) -> None:
    admin = AdminClient(secure.kafka_config("admin"))
    from confluent_kafka.admin import (
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    everything = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    bindings = admin.describe_acls(everything).result(30)
    principals = {b.principal for b in bindings}
    assert principals == {f"User:{r}" for r in ("agent", "rewards", "sink", "learner", "operator")}
    print(
        "\n"
        + "\n".join(
            sorted(
                f"{b.principal:<14} {b.operation.name:<17} {b.restype.name:<16} "
                f"{b.resource_pattern_type.name:<9} {b.name}"
                for b in bindings
            )
        )
    )
