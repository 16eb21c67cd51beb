"""README.md never rots: its Markdown (every code fence closed, every heading a heading), its two
opening commands, every `atlas` command it shows (parsed by the real CLI), both agent code
samples (run against the real broker: one on an OpenAI-compatible server, one on the local
model), the monitoring SQL files it names (exactly what `atlas monitor` runs), and the demo it
opens with (`--quick`, to its report)."""

from __future__ import annotations

import itertools
import os
import random
import re
import shlex
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from confluent_kafka import Consumer
from markdown_it import MarkdownIt

from atlas.cli import app
from atlas.settings import Settings
from deploy.local.processes import pid_alive
from schemas.codec import AvroCodec
from schemas.models import FeedbackEvent, InteractionEvent
from schemas.topics import FEEDBACK, INTERACTIONS, TRIGGERS
from store.client import connect
from store.migrations import migrate
from store.monitoring import DATASET_QUERIES, MONITOR_QUERIES, load_sql, monitor, sql_parameters
from store.writer import StoreWriter
from tests.conftest import LLAMA_API_KEY
from tests.factories import interaction, scored
from tests.workers import skip_to_end

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
TOKENS = MarkdownIt("commonmark").parse(README)
FENCES = [token for token in TOKENS if token.type == "fence"]
HEADINGS = [TOKENS[i + 1].content for i, t in enumerate(TOKENS) if t.type == "heading_open"]


def blocks(language: str) -> list[str]:
    return [fence.content for fence in FENCES if fence.info.strip() == language]


def test_every_code_fence_in_the_readme_opens_and_closes() -> None:
    lines = README.splitlines()
    assert sum(line.startswith("```") for line in lines) % 2 == 0, "a ``` fence is never closed"
    for fence in FENCES:
        assert fence.map is not None
        start, end = fence.map
        where = f"README.md:{start + 1}"
        # a stray closing fence opens a block with no language that swallows what follows
        assert fence.info.strip(), f"{where}: a code fence without a language (a stray fence?)"
        assert lines[end - 1].strip() == fence.markup, f"{where}: this code fence is never closed"
        swallowed = re.search(r"^#{2,6} .*", fence.content, flags=re.M)
        assert not swallowed, f"{where}: the heading {swallowed.group()!r} is inside a code block"


def test_the_readme_headings_and_lists_are_markdown_not_code() -> None:
    for heading in ("Using it from an agent", "Rewards, the stream and monitoring"):
        assert heading in HEADINGS
    inline = [token.content for token in TOKENS if token.type == "inline"]
    for bullet in ("**Modes**", "**Backends**", "**Monitoring**"):
        assert any(text.startswith(bullet) for text in inline), f"{bullet} is not a list item"


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
def test_every_atlas_command_in_the_readme_parses(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the files the example names exist
    for option, value in itertools.pairwise(args):
        if option == "--file":
            (tmp_path / value).write_text("an example prompt\n")
    # Typer ships its own click: a group is what has sub-commands, whatever its class
    command = typer.main.get_command(app)
    rest = list(args)
    while isinstance(getattr(command, "commands", None), dict) and rest:
        assert rest[0] in command.commands, f"unknown command {rest[0]!r} in {args}"
        command = command.commands[rest.pop(0)]
    command.make_context("atlas", rest, resilient_parsing=False)  # raises on bad options


def agent_sample(backend: str) -> str:
    (sample,) = [block for block in blocks("python") if f"= {backend}(" in block]
    return sample


def run_sample(sample: str) -> InteractionEvent:
    namespace: dict[str, object] = {}
    exec(compile(sample, "README.md", "exec"), namespace)
    event = namespace["event"]
    assert isinstance(event, InteractionEvent) and event.final_answer
    return event


def assert_recorded(event: InteractionEvent, kafka_config: dict[str, str]) -> None:
    """The sample's interaction and feedback are on their topics, under the trace's key."""
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


def test_the_two_agent_samples_differ_only_in_the_model() -> None:
    assert len(blocks("python")) == 3  # the two runtime samples and the SDK's
    online, offline = agent_sample("OpenAIBackend"), agent_sample("LocalBackend")
    assert online.split("\nseeds = ")[1] == offline.split("\nseeds = ")[1]
    assert "os.environ" not in online  # the endpoint comes from the ATLAS_ settings


@pytest.mark.parametrize("key_variable", ["ATLAS_OPENAI_API_KEY", "OPENAI_API_KEY"])
def test_the_readme_openai_sample_runs(
    stack_settings: Settings,
    kafka_config: dict[str, str],
    llama_server: object,
    monkeypatch: pytest.MonkeyPatch,
    key_variable: str,
) -> None:
    """On llama.cpp's server, which requires its key: from ATLAS_OPENAI_API_KEY, or from the
    stock OPENAI_API_KEY when that is all a user set."""
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ATLAS_OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATLAS_HOME", str(stack_settings.home))
    monkeypatch.setenv("ATLAS_OPENAI_BASE_URL", llama_server.base_url)  # type: ignore[attr-defined]
    monkeypatch.setenv(key_variable, LLAMA_API_KEY)
    monkeypatch.setenv("ATLAS_STUDENT_MODEL", "smollm2")
    event = run_sample(agent_sample("OpenAIBackend"))
    assert event.models["student"] == "smollm2"
    assert_recorded(event, kafka_config)


def test_the_readme_offline_sample_runs(
    stack_settings: Settings,
    kafka_config: dict[str, str],
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATLAS_HOME", str(stack_settings.home))
    event = run_sample(agent_sample("LocalBackend"))
    assert event.models["student"] == model_dir.name
    assert_recorded(event, kafka_config)


def test_the_readme_sdk_sample_records_its_call_and_feedback(
    stack_settings: Settings,
    kafka_config: dict[str, str],
    llama_server: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's three lines around the stock client, on llama.cpp's server."""
    from atlas import sdk

    (sample,) = [block for block in blocks("python") if "from atlas import sdk" in block]
    agent = f"readme-sdk-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("ATLAS_HOME", str(stack_settings.home))
    monkeypatch.setenv("ATLAS_AGENT_ID", agent)
    monkeypatch.setenv("OPENAI_BASE_URL", llama_server.base_url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_API_KEY", LLAMA_API_KEY)
    sdk.close()  # a default tracer another test made would name another agent
    try:
        exec(compile(sample, "README.md", "exec"), {})
        trace_id = sdk.last_trace_id()
    finally:
        sdk.close()  # flushed, as at exit
    assert trace_id
    event = InteractionEvent(
        trace_id=trace_id,
        agent_id=agent,
        task_id="-",
        task_input="-",
        mode="auto",
        final_answer="-",
    )
    assert_recorded(event, kafka_config)


def test_the_monitoring_queries_are_the_sql_files_the_readme_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "`store/sql/`" in README
    files = {path.stem: path.read_text() for path in (ROOT / "store" / "sql").glob("*.sql")}
    assert set(files) == set(MONITOR_QUERIES) | set(DATASET_QUERIES)
    for name, text in files.items():
        assert load_sql(name) == text
        assert sql_parameters(text) <= {"since", "until", "limit", "agent", "threshold"}, name
        # no Python formatting left: every brace is a ClickHouse query parameter {name:Type}
        assert text.count("{") == text.count("}") == len(re.findall(r"\{\w+:[^{}]+\}", text))
    monitoring = (ROOT / "store" / "monitoring.py").read_text()
    assert not re.search(r"\bselect\b", monitoring, flags=re.I), "SQL left in monitoring.py"

    # every file parses and runs on the store's real tables (embedded), and monitor() runs
    # exactly the files, one result each
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    migrate(client)
    rng = random.Random(3)
    at = datetime(2026, 11, 25, 12, tzinfo=UTC)
    StoreWriter(client).write([scored(interaction(rng, at=at), rng) for _ in range(20)])
    ran: list[str] = []
    query = client.query

    def recording_query(sql: str, *args: object, **kwargs: object) -> object:
        ran.append(sql)
        return query(sql, *args, **kwargs)

    monkeypatch.setattr(client, "query", recording_query)
    results = monitor(client, datetime(2026, 1, 1, tzinfo=UTC))
    client.close()
    assert list(results) == list(MONITOR_QUERIES)
    assert sorted(ran) == sorted(files[name] for name in MONITOR_QUERIES)
    (summary,) = results["summary"]
    assert summary["agent_id"] == "agent-a" and summary["traces"] == 20
    assert results["reward_by_hour"] and results["tokens_by_mode"]


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
    assert len(pids) == 4 and not any(pid_alive(pid, "atlas.cli") for pid in pids)
    # The deliberately worse candidate ran as a canary and was never promoted; whatever
    # decided it is in the report's table with its figures.
    worse = re.search(r"rollout of the worse candidate: (.+)", out)
    assert worse is not None and worse.group(1).strip() != "promoted", out[-3000:]
    assert "Canary rollouts" in out and "worse candidate" in out.split("Canary rollouts")[1]
    assert "stopped store" not in out  # the stack was already up: the demo leaves it running
