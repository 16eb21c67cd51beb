"""The demonstration memory live, on a fresh local stack (issue 16's must-show): users' edits
from `atlas agent run --simulate-users` become entries on ``atlas.memory.v1`` and rows in
ClickHouse within seconds; turning memory on for the agent faces the held-out gate with the
local model; later similar tasks name the entries in their InteractionEvent; a user's wrong
edit is retired by the per-entry rule; an operator forgets an entry.

    .venv/bin/python benchmarks/memory_live.py [--n 24] [--second-n 48] [--keep]

Every step is the CLI a person would type (`atlas up`, `atlas worker rewards|sink`, `atlas
agent run`, `atlas memory list|forget|policy`); its output is printed, then the figures:
edit -> entry on the topic (the message's Kafka timestamp), edit -> row in ``memory_entries``
(first seen by a 0.2 s poll, so up to 0.2 s late), the first trace that names each entry, and
lookup vs generation time per task (`atlas agent run`'s summary), and each entry's reward on
the tasks shown it vs the similar tasks the holdout kept it from, from ClickHouse. So that
retirement can show in a short run, a copy of ``configs/`` holds entries back from half their
matches (``holdout: 0.5``, default 0.2) and judges them after 5 tasks per arm (default 10).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from atlas.settings import PROJECT_CONFIGS, Settings
from deploy.local.processes import stop_pid
from runtime.producer import EventProducer
from store.client import connect

AGENT = "live-memory"
# memory.yaml for a short run: more held-back tasks per match, an earlier first look
SHORT_RUN = {"holdout": "0.5", "retire_min_uses": "5", "retire_tuned_uses": "20"}


def atlas(env: dict[str, str], *args: str, check: bool = True) -> str:
    """Run one `atlas` command as a person would, print and return its output."""
    print(f"\n$ atlas {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "atlas.cli", *args],
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        check=False,
    )
    print((done.stdout + done.stderr).rstrip(), flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"atlas {args[0]} failed with exit code {done.returncode}")
    return done.stdout


class StorePoll:
    """Notes when each entry's row (and each change of its output) first shows in the store."""

    def __init__(self, settings: Settings):
        self.client = connect(settings.store())
        self.first_seen: dict[tuple[str, str], datetime] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sql = "SELECT entry_id, output FROM memory_entries WHERE agent_id = {a:String}"
        while not self.stop.wait(0.2):
            now = datetime.now(UTC)
            for entry_id, output in self.client.query(sql, parameters={"a": AGENT}).result_rows:
                self.first_seen.setdefault((entry_id, output), now)


def utc(value: datetime) -> datetime:
    """The store's times come back naive (they are UTC): comparable with ours."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def rows(settings: Settings, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    return connect(settings.store()).query(sql, parameters={"a": AGENT}).result_rows


def edit_latencies(settings: Settings, poll: StorePoll) -> None:
    """Per user edit: when the entry it made reached the topic and the store."""
    edits = rows(
        settings,
        """
        SELECT f.created_at, m.entry_id, m.output, m.version, m.input
        FROM feedback AS f
        INNER JOIN (SELECT * FROM memory_entries FINAL) AS m ON m.source_trace_id = f.trace_id
        WHERE f.agent_id = {a:String} AND f.kind = 'edit' AND m.agent_id = {a:String}
        ORDER BY f.created_at
        """,
    )
    print(f"\n{len(edits)} user edits with their entry (edit -> topic, edit -> store):")
    topic_ms, store_ms = [], []
    for created, entry_id, output, on_topic, _input in edits:
        seen = poll.first_seen.get((entry_id, output))
        topic_ms.append((utc(on_topic) - utc(created)).total_seconds() * 1000)
        line = f"  {entry_id[:12]} {output!r:12} topic +{topic_ms[-1]:.0f} ms"
        if seen is not None:
            store_ms.append((seen - utc(created)).total_seconds() * 1000)
            line += f", store +{store_ms[-1]:.0f} ms"
        print(line)
    for name, values in (("topic", topic_ms), ("store", store_ms)):
        if values:
            values.sort()
            print(
                f"edit -> {name}: median {values[len(values) // 2]:.0f} ms,"
                f" max {values[-1]:.0f} ms (n={len(values)})"
            )


def first_uses(settings: Settings, since: datetime) -> None:
    """For each entry made since ``since`` (memory on), the first later trace whose
    InteractionEvent names it, and how long after the entry was made."""
    used = (
        connect(settings.store())
        .query(
            """
        SELECT m.entry_id, any(m.input), any(m.created_at) AS made,
               argMin(t.trace_id, t.created_at), argMin(t.task_input, t.created_at),
               min(t.created_at) AS first_at
        FROM (
            SELECT entry_id, input, created_at FROM memory_entries FINAL
            WHERE agent_id = {a:String} AND created_at >= {since:DateTime64(3)}
        ) AS m
        INNER JOIN (
            SELECT trace_id, task_input, created_at, arrayJoin(memory_entries) AS entry_id
            FROM latest_traces WHERE agent_id = {a:String}
        ) AS t ON t.entry_id = m.entry_id
        WHERE t.created_at >= m.created_at
        GROUP BY m.entry_id
        ORDER BY made
        """,
            parameters={"a": AGENT, "since": since},
        )
        .result_rows
    )
    gaps = sorted((utc(first) - utc(made)).total_seconds() for *_, made, _, _, first in used)
    if not gaps:
        print("\nno entry made with memory on was named by a later trace")
        return
    print(
        f"\n{len(used)} entries made with memory on were named by a later trace: first use"
        f" median {gaps[len(gaps) // 2]:.1f} s after the entry, min {gaps[0]:.1f} s"
    )
    for entry_id, entry_input, made, trace_id, task_input, first in used[:3]:
        after = (utc(first) - utc(made)).total_seconds()
        print(f"  entry {entry_id[:12]} ({entry_input[:60]!r})")
        print(f"    named by trace {trace_id[:8]} {after:+.1f} s after it: {task_input[:60]!r}")


def poison(settings: Settings) -> str:
    """A user's wrong edit of an already edited task: the entry now teaches a wrong city."""
    trace_id, entry_id, output = rows(
        settings,
        """
        SELECT source_trace_id, entry_id, output FROM memory_current
        WHERE agent_id = {a:String} AND source = 'edit' ORDER BY created_at LIMIT 1
        """,
    )[0]
    # a wrong city in a rambling sentence: it teaches the student both a wrong answer and
    # the format the users keep correcting, so tasks shown it should score lower
    wrong = f"Hard to say, it could be {'Tokyo' if output != 'Tokyo' else 'Lisbon'} or Paris."
    with EventProducer(settings.kafka_config("agent")) as producer:
        producer.record_feedback(
            trace_id, "edit", edited_text=wrong, agent_id=AGENT, user_id="careless"
        )
    print(f"\na careless user edits trace {trace_id[:8]} to {wrong!r} (entry {entry_id[:12]})")
    return entry_id


def entry_effects(settings: Settings, poisoned: str) -> None:
    """Each entry's mean reward on the tasks shown it vs the tasks it matched but was held
    back from (the comparison that retires it), from the store: the most matched first."""
    effects = rows(
        settings,
        """
        SELECT entry_id, countIf(shown) AS n_shown, avgIf(reward, shown),
               countIf(NOT shown) AS n_held, avgIf(reward, NOT shown)
        FROM (
            SELECT arrayJoin(arrayConcat(
                       arrayMap(e -> (e, true), memory_entries),
                       arrayMap(e -> (e, false), memory_held_back))) AS named,
                   named.1 AS entry_id, named.2 AS shown, reward
            FROM latest_traces WHERE agent_id = {a:String}
        )
        GROUP BY entry_id ORDER BY n_shown + n_held DESC LIMIT 8
        """,
    )
    print("\nentry reward shown vs held back (latest_traces; * the careless user's edit):")
    for entry_id, n_shown, shown, n_held, held in effects:
        mark = "*" if entry_id == poisoned else " "
        held_text = f"{held:.3f} over {n_held}" if n_held else "none held back"
        print(f"  {mark}{entry_id[:12]} shown {shown:.3f} over {n_shown}, held back {held_text}")
    retired = rows(
        settings,
        "SELECT entry_id, retired_reason FROM memory_entries FINAL"
        " WHERE agent_id = {a:String} AND retired_reason IS NOT NULL",
    )
    for entry_id, reason in retired:
        mark = " (the careless user's edit)" if entry_id == poisoned else ""
        print(f"retired {entry_id[:12]}{mark}: {reason}")
    if not retired:
        print("no entry retired")


def wait_for(settings: Settings, sql: str, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not rows(settings, sql):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="tasks in the first run")
    parser.add_argument("--second-n", type=int, default=160, help="tasks after the wrong edit")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="atlas-live-"))
    configs = home / "configs"
    shutil.copytree(PROJECT_CONFIGS, configs)
    memory_yaml = configs / "memory.yaml"
    lines = memory_yaml.read_text().splitlines()
    memory_yaml.write_text(
        "\n".join(
            f"{key}: {SHORT_RUN[key]}" if (key := line.split(":")[0]) in SHORT_RUN else line
            for line in lines
        )
    )
    env = {**os.environ, "ATLAS_HOME": str(home), "ATLAS_CONFIG_DIR": str(configs)}
    settings = Settings(home=home, config_dir=configs)
    started = time.monotonic()
    atlas(env, "up")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "atlas.cli", "worker", kind],
            env=env,
            stdout=(home / f"{kind}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for kind in ("rewards", "sink")
    ]
    poll = StorePoll(settings)
    try:
        # batches of 4: an edit of one batch reaches the agent before the next batch or two
        run = ["agent", "run", "--agent", AGENT, "--task", "extraction", "--mode", "auto"]
        run += ["--batch", "4"]
        atlas(env, *run, "--n", str(args.n), "--split", "train", "--simulate-users")
        time.sleep(5)  # the last batch's feedback through the stream
        edit_latencies(settings, poll)
        # memory is off until a policy passes the gate: held-out examples from these traces
        # (and built-in extraction tasks), each side with the entries the agent holds now
        atlas(env, "memory", "policy", "--agent", AGENT)
        gate = ["memory", "policy", "--agent", AGENT, "--enabled", "--since", "1h"]
        if "rejected" in atlas(env, *gate, check=False):
            print("the gate refused: turning memory on with --force, to show the rest")
            atlas(env, *gate, "--force")
        memory_on = datetime.now(UTC)
        poisoned = poison(settings)
        wait_for(
            settings,
            "SELECT 1 FROM memory_current WHERE agent_id = {a:String}"
            f" AND entry_id = '{poisoned}' AND startsWith(output, 'Hard to say')",
            "the wrong edit's entry",
        )
        atlas(env, *run, "--n", str(args.second_n), "--seed", "1", "--simulate-users")
        time.sleep(5)
        first_uses(settings, memory_on)
        entry_effects(settings, poisoned)
        atlas(env, "memory", "list", "--all", "--agent", AGENT)
        victim = rows(
            settings,
            "SELECT entry_id FROM memory_current WHERE agent_id = {a:String}"
            " ORDER BY created_at DESC LIMIT 1",
        )[0][0]
        atlas(env, "memory", "forget", "--yes", "--agent", AGENT, victim[:12])
        wait_for(
            settings,
            "SELECT 1 FROM memory_entries FINAL WHERE agent_id = {a:String}"
            f" AND entry_id = '{victim}' AND deleted",
            "the forgotten entry's deleted row",
        )
        atlas(env, "memory", "list", "--all", "--agent", AGENT)
        atlas(env, "prompts", "list", "--agent", AGENT, "--role", "student")
    finally:
        poll.stop.set()
        for worker in workers:
            stop_pid(worker.pid, "atlas.cli", timeout=20)
        atlas(env, "down", check=False)
        print(f"\nwall time {time.monotonic() - started:.0f} s")
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
