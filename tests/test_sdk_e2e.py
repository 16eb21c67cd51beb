"""The tracing SDK on the real stack: a process that records and exits has flushed its trace
and feedback to Kafka (atexit); the stock `openai` client against llama.cpp's server inside
@traced, and an async block, scored by the reward worker and stored by the sink, and a
feedback() revision arriving in ClickHouse."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import openai

from atlas import sdk
from atlas.settings import Settings
from schemas.codec import AvroCodec
from schemas.models import FeedbackEvent, InteractionEvent
from schemas.topics import FEEDBACK, INTERACTIONS
from store.client import connect
from tests.conftest import LLAMA_API_KEY
from tests.workers import WorkerProcess, eventually, reader_at_end

ROOT = Path(__file__).resolve().parent.parent
EXITING_AGENT = """
from atlas import sdk

@sdk.traced
def answer(question: str) -> str:
    assert sdk.prompt("student", default="Answer briefly.")  # follows atlas.prompts.v1
    return "Lisbon"

answer("Ship order 123 to Lisbon. Which city?")
sdk.feedback(sdk.last_trace_id(), "approve")
print(sdk.last_trace_id())
"""  # no close(): the interpreter's exit flushes


def read_back(reader: Any, trace_id: str, timeout: float = 60) -> dict[str, Any]:
    codec, seen = AvroCodec(), {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < 2:
        message = reader.poll(0.5)
        if message is None or message.error() or message.key() != trace_id.encode():
            continue
        kind = InteractionEvent if message.topic() == INTERACTIONS else FeedbackEvent
        seen[message.topic()] = codec.decode(message.value(), kind)
    return seen


def run_exiting_agent(
    settings: Settings, reader_config: dict[str, str]
) -> tuple[str, dict[str, Any], str]:
    """Run EXITING_AGENT against the stack of ``settings``; its agent id, what it left on
    Kafka (topic: event) and its stderr."""
    agent = f"sdk-exit-{uuid.uuid4().hex[:8]}"
    reader = reader_at_end(reader_config, [INTERACTIONS, FEEDBACK])
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(EXITING_AGENT)],
            env={
                **os.environ,
                "ATLAS_HOME": str(settings.home),
                "ATLAS_AGENT_ID": agent,
                "PYTHONPATH": str(ROOT),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        print(f"\nexiting agent: recorded, flushed at exit, took {time.monotonic() - started:.1f}s")
        seen = read_back(reader, done.stdout.strip().splitlines()[-1])
    finally:
        reader.close()
    assert set(seen) == {INTERACTIONS, FEEDBACK}, done.stderr
    interaction, feedback = seen[INTERACTIONS], seen[FEEDBACK]
    assert (interaction.agent_id, interaction.final_answer) == (agent, "Lisbon")
    assert interaction.task_input == "Ship order 123 to Lisbon. Which city?"
    assert (feedback.kind, feedback.agent_id) == ("approve", agent)
    assert not (settings.home / "spill" / f"sdk-{agent}.jsonl").exists()
    return agent, seen, done.stderr


def test_a_process_that_records_and_exits_has_flushed_its_trace_and_feedback(
    stack_settings: Settings, kafka_config: dict[str, str]
) -> None:
    run_exiting_agent(stack_settings, kafka_config)


def test_traced_openai_calls_and_blocks_are_scored_stored_and_revised_by_feedback(
    stack_settings: Settings, kafka_config: dict[str, str], llama_server: Any, tmp_path: Path
) -> None:
    agent = f"sdk-{uuid.uuid4().hex[:8]}"
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    sdk.configure(agent, sdk.SdkSettings(home=stack_settings.home, sdk_spill=False))
    client = openai.OpenAI(base_url=llama_server.base_url, api_key=LLAMA_API_KEY)
    try:

        @sdk.traced
        def capital(country: str) -> str:
            completion = client.chat.completions.create(
                model="SmolLM2-135M-Instruct",
                messages=[
                    {"role": "system", "content": "Answer with one word."},
                    {"role": "user", "content": f"What is the capital of {country}?"},
                ],
                temperature=0,
                max_tokens=12,
            )
            return completion.choices[0].message.content or ""

        answer = capital("France")
        called = sdk.last_trace_id()

        async def block() -> str:
            async with sdk.record("What is 2 + 2?", task_family="arithmetic") as trace:
                await asyncio.sleep(0)
                trace.output = "4"
            return trace.trace_id

        plain = asyncio.run(block())
        assert answer and called and sdk.feedback(called, "rating", rating=5)
        store = connect(stack_settings.store())
        sql = (
            "SELECT trace_id, revision, feedback_count, round(reward, 3), task_input,"
            " final_answer, models['student'], prompt_tokens, completion_tokens,"
            " metadata['source'], metadata['system_prompt']"
            " FROM latest_traces WHERE agent_id = {a:String} ORDER BY task_input"
        )

        def scored() -> list[tuple[Any, ...]] | None:
            rows = store.query(sql, parameters={"a": agent}).result_rows
            return rows if len(rows) == 2 and sum(row[2] for row in rows) == 1 else None

        rows = eventually(scored, 240, "both SDK traces scored, one revised by feedback", 2)
        print(f"\n{sql.replace('{a:String}', repr(agent))}")
        for row in rows:
            print(row)
        by_trace = {row[0]: row for row in rows}
        assert set(by_trace) == {called, plain}
        llm = by_trace[called]
        assert llm[1] >= 2 and llm[2] == 1  # revision 1 scored, feedback made the next one
        assert llm[4] == "What is the capital of France?" and llm[5] == answer
        assert llm[6] and llm[9:] == ("atlas-sdk", "Answer with one word.")
        assert llm[7] > 0 and llm[8] > 0  # llama.cpp's token usage, captured
        assert by_trace[plain][1:3] == (1, 0) and by_trace[plain][5] == "4"
        stats = sdk.stats()
        assert (stats["recorded"], stats["feedback"], stats["dropped"]) == (2, 1, 0)
    finally:
        sdk.close()
        for worker in workers:
            worker.stop()
