"""No secret leaks: after a run in which workers score traffic, a job fails on a store URL that
carries the password, and the CLI reports status, grep everything the product wrote (worker
logs, files under ATLAS_HOME, every message on every topic, every table) for the store's
password and for the OpenAI key every worker held. Neither may appear anywhere."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

from atlas.settings import Settings
from deploy.local.processes import free_port
from runtime.producer import EventProducer
from schemas.codec import AvroCodec
from schemas.models import FeedbackEvent, JobStatus, RetrainTrigger
from schemas.topics import JOBS, TOPICS, TRIGGERS
from store.client import connect
from tests.factories import interaction
from tests.leaks import everything_on, files_under, leaks_of, tables_of
from tests.workers import WorkerProcess, eventually, reader_at_end, scored_count, skip_to_end


def test_no_secret_in_logs_events_tables_or_files(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    target = stack_settings.store()
    assert target.password is not None
    password = target.password.get_secret_value()
    api_key = f"sk-canary-{uuid.uuid4().hex}"
    env = {"ATLAS_OPENAI_API_KEY": api_key}
    url_with_password = f"http://default:{password}@127.0.0.1:{free_port()}/default"

    skip_to_end(kafka_config, "atlas-gepa", TRIGGERS)
    workers = [
        WorkerProcess(stack_settings, "rewards", tmp_path, env),
        WorkerProcess(stack_settings, "sink", tmp_path, env),
        WorkerProcess(
            stack_settings, "gepa", tmp_path, {**env, "ATLAS_CLICKHOUSE_URL": url_with_password}
        ),
    ]
    jobs = reader_at_end(kafka_config, [JOBS])
    codec = AvroCodec()
    try:
        rng = random.Random(5)
        producer = EventProducer(kafka_config)
        agent = f"leak-{uuid.uuid4().hex[:6]}"
        events = [interaction(rng, agent_id=agent) for _ in range(20)]
        for event in events:
            producer.send(event)
            producer.send(FeedbackEvent(trace_id=event.trace_id, kind="approve"))
        producer.send(RetrainTrigger(kind="gepa", agent_id=agent, reason="secret-leak test"))
        producer.flush()

        def job_failed() -> JobStatus | None:
            message = jobs.poll(1.0)
            if message is None or message.error():
                return None
            status = codec.decode(message.value(), JobStatus)
            return status if status.agent_id == agent and status.state == "FAILED" else None

        failed = eventually(job_failed, 240, "the GEPA job to fail on the unreachable store")
        store = connect(target)
        eventually(
            lambda: scored_count(store, agent) >= len(events),
            120,
            "the traces to be stored",
        )
        eventually(
            lambda: (
                store.query(
                    "SELECT count() FROM jobs WHERE agent_id = {a:String} AND state = 'FAILED'",
                    {"a": agent},
                ).result_rows[0][0]
                >= 1
            ),
            120,
            "the failed job to be stored",
        )
    finally:
        for worker in workers:
            worker.stop()
        jobs.close()
    # the redaction was exercised: the failure names the URL, with the password starred out
    assert "default:***@127.0.0.1" in failed.message, failed.message

    status = subprocess.run(
        [sys.executable, "-m", "atlas.cli", "status"],
        env={
            **os.environ,
            "ATLAS_HOME": str(stack_settings.home),
            "ATLAS_CLICKHOUSE_URL": url_with_password,
            **env,
        },
        capture_output=True,
        timeout=120,
    )
    written: dict[str, bytes] = {
        "atlas status": status.stdout + status.stderr,
        **{f"log {w.log.name}": w.log.read_bytes() for w in workers},
        **files_under(stack_settings.home, skip={"secrets", "store", "kafka"}),
        "every topic": everything_on(kafka_config, list(TOPICS)),
        **tables_of(store),
    }
    assert b"default:***@127.0.0.1" in written["atlas status"]
    leaks = leaks_of([password, api_key], written)
    assert not leaks, f"a secret was written to: {', '.join(leaks)}"
    print(f"\ngrepped {len(written)} outputs, {sum(map(len, written.values())):,} bytes: clean")
