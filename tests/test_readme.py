"""README.md never rots: its two opening commands, every `atlas` command it shows (parsed by
the real CLI), the agent code sample (run against the real broker and an OpenAI-compatible
server), and the demo it opens with (`--quick`, to its report)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import click
import pytest
import typer
from confluent_kafka import Consumer

from atlas.cli import app
from atlas.settings import Settings
from deploy.local.processes import pid_alive
from schemas.codec import AvroCodec
from schemas.models import FeedbackEvent, InteractionEvent
from schemas.topics import FEEDBACK, INTERACTIONS, TRIGGERS
from tests.conftest import LLAMA_API_KEY
from tests.workers import skip_to_end

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_readme_opens_with_set_up_and_demo_then_the_ci_test_command() -> None:
    first, second = blocks("bash")[:2]
    assert first.strip() == "bash deploy/setup.sh && .venv/bin/atlas demo"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert second.strip() == ci[-1].strip()


def atlas_invocations() -> list[list[str]]:
    found = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #")[0]
            for part in line.split("&&"):
                part = re.sub(r"\[.*?\]", "", part).replace("...", "").strip().rstrip("&").strip()
                if part.startswith(".venv/bin/atlas"):
                    args = shlex.split(part)[1:]
                    found.append([a for a in args if not a.startswith("$(")])
    return found


@pytest.mark.parametrize("args", atlas_invocations(), ids=lambda a: " ".join(a))
def test_every_atlas_command_in_the_readme_parses(args: list[str]) -> None:
    command: click.Command = typer.main.get_command(app)
    rest = list(args)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    assert not isinstance(command, click.Group) or not rest, f"unknown command in {args}"
    command.make_context("atlas", rest, resilient_parsing=False)  # raises on bad options


def test_the_readme_agent_sample_runs(
    stack_settings: Settings,
    kafka_config: dict[str, str],
    llama_server: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (sample,) = blocks("python")
    monkeypatch.setenv("ATLAS_HOME", str(stack_settings.home))
    monkeypatch.setenv("OPENAI_BASE_URL", llama_server.base_url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_API_KEY", LLAMA_API_KEY)
    monkeypatch.setenv("OPENAI_MODEL", "smollm2")
    namespace: dict[str, object] = {}
    exec(compile(sample, "README.md", "exec"), namespace)
    event = namespace["event"]
    assert isinstance(event, InteractionEvent) and event.final_answer

    codec = AvroCodec()
    consumer = Consumer(
        {**kafka_config, "group.id": f"readme-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([INTERACTIONS, FEEDBACK])
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and seen != {INTERACTIONS, FEEDBACK}:
        message = consumer.poll(0.5)
        if message is None or message.error() or message.key() != event.trace_id.encode():
            continue
        kind = InteractionEvent if message.topic() == INTERACTIONS else FeedbackEvent
        decoded = codec.decode(message.value(), kind)
        assert decoded.trace_id == event.trace_id
        seen.add(message.topic())
    consumer.close()
    assert seen == {INTERACTIONS, FEEDBACK}


def test_the_quick_demo_runs_to_its_report(stack_settings: Settings) -> None:
    skip_to_end(stack_settings.kafka_config(), "atlas-gepa", TRIGGERS)  # earlier tests' triggers
    result = subprocess.run(
        [sys.executable, "-m", "atlas.cli", "demo", "--quick", "--job-timeout", "600"],
        env={**os.environ, "ATLAS_HOME": str(stack_settings.home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    for heading in ("Reward before/after the new prompt", "The gate", "lineage: trigger"):
        assert heading in out
    assert re.search(r"job gepa-\w+ ended (SUCCEEDED|REJECTED)", out)
    chart = Path(re.search(r"chart: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert chart.exists() and chart.stat().st_size > 10_000
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out.split("workers:")[1].splitlines()[0])]
    assert len(pids) == 3 and not any(pid_alive(pid, "atlas.cli") for pid in pids)
    assert "stopped store" not in out  # the stack was already up: the demo leaves it running
