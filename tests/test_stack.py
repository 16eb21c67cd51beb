"""The local stack as a user meets it: topics and their policies, status, and the errors
for the mistakes people make (second `up`, taken port, missing Java), each one line."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from typer.testing import CliRunner

from atlas.cli import app
from atlas.settings import Settings, topic_specs
from schemas.topics import TOPICS

pytestmark = pytest.mark.integration

runner = CliRunner()


def _env(home: Path) -> dict[str, str]:
    return {"ATLAS_HOME": str(home), "COLUMNS": "200"}


def test_topics_exist_with_their_configured_policies(stack_settings: Settings) -> None:
    admin = AdminClient(stack_settings.kafka_config())
    metadata = admin.list_topics(timeout=10)
    specs = topic_specs(stack_settings.config_dir)
    resources = [ConfigResource("topic", name) for name in TOPICS]
    for resource, future in admin.describe_configs(resources).items():
        config = future.result(10)
        spec = specs[resource.name]
        assert config["cleanup.policy"].value == spec.config["cleanup.policy"]
        assert len(metadata.topics[resource.name].partitions) == spec.partitions
    assert specs["atlas.prompts.v1"].config["cleanup.policy"] == "compact"


def test_status_shows_both_services_running(stack_settings: Settings) -> None:
    result = runner.invoke(app, ["status"], env=_env(stack_settings.home))
    assert result.exit_code == 0
    assert result.output.count("running") == 2
    assert stack_settings.bootstrap() in result.output


def test_up_twice_is_a_clear_error(stack_settings: Settings) -> None:
    result = runner.invoke(app, ["up"], env=_env(stack_settings.home))
    assert result.exit_code == 1
    assert "already running" in result.output and "atlas down" in result.output


def test_taken_port_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["up", "--kafka-port", str(port)], env=_env(tmp_path))
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is already taken" in result.output
    assert not (tmp_path / "stack.json").exists()


def test_missing_java_says_how_to_install_it(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**_env(tmp_path), "PATH": str(bare)}
    old_path = os.environ["PATH"]
    try:
        os.environ["PATH"] = str(bare)
        assert shutil.which("java") is None
        result = runner.invoke(app, ["up"], env=env)
    finally:
        os.environ["PATH"] = old_path
    assert result.exit_code == 1
    assert "java not found" in result.output and "apt-get install" in result.output


def test_down_on_a_stack_that_never_ran(tmp_path: Path) -> None:
    result = runner.invoke(app, ["down"], env=_env(tmp_path))
    assert result.exit_code == 0 and "nothing was running" in result.output


def test_unconfigured_kafka_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ATLAS_KAFKA_BOOTSTRAP", raising=False)
    from deploy.local.processes import StackError

    with pytest.raises(StackError, match="run `atlas up` or set ATLAS_KAFKA_BOOTSTRAP"):
        Settings(home=tmp_path).kafka_config()


def test_down_stops_by_pid_and_up_again_keeps_the_data(tmp_path: Path) -> None:
    import uuid

    from confluent_kafka import Consumer, Producer

    from atlas import stack
    from deploy.local.processes import pid_alive

    settings = Settings(home=tmp_path)
    first = stack.up(settings)
    assert first.kafka and first.store
    marker = uuid.uuid4().hex.encode()
    producer = Producer({**settings.kafka_config(), "acks": "all"})
    producer.produce("atlas.jobs.v1", value=marker)
    assert producer.flush(20) == 0
    stopped = stack.down(settings)
    assert len(stopped) == 2
    assert not pid_alive(first.kafka.pid, "kafka.Kafka")
    assert not pid_alive(first.store.pid, "store_server")
    try:
        again = stack.up(settings)
        assert again.kafka and again.kafka.data_dir == first.kafka.data_dir
        consumer = Consumer(
            {**settings.kafka_config(), "group.id": "keep", "auto.offset.reset": "earliest"}
        )
        consumer.subscribe(["atlas.jobs.v1"])
        seen = []
        for _ in range(40):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                seen.append(message.value())
                break
        consumer.close()
        assert seen == [marker]
    finally:
        stack.down(settings)


@pytest.mark.parametrize("previous", [None, 40001])
def test_a_port_the_kernel_offers_twice_is_not_given_to_two_servers(
    monkeypatch: pytest.MonkeyPatch, previous: int | None
) -> None:
    """The kernel may offer the broker's port again for the controller (nothing listens on it
    yet): it is passed over, as is a previous port another server now has."""
    from atlas import stack

    offers = iter([40001, 40001, 40002])
    monkeypatch.setattr(stack, "free_port", lambda: next(offers))
    monkeypatch.setattr(stack, "port_is_free", lambda _port: True)
    assert stack._pick_port(None, None, "Kafka") == 40001
    assert stack._pick_port(None, previous, "the controller", (40001,)) == 40002
    monkeypatch.setattr(stack, "free_port", lambda: 40001)
    with pytest.raises(stack.StackError, match="no free port for the store"):
        stack._pick_port(None, None, "the store", (40001,))
