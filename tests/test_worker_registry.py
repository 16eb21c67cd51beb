"""Workers on one host: distinct ids per kind, the same id back after a crash, a clear refusal
of a duplicate ATLAS_WORKER_ID, and `atlas status` listing them with their PIDs, groups and
lag. Real worker processes on the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas import registry
from atlas.settings import Settings
from deploy.local.processes import StackError
from tests.workers import WorkerProcess, eventually


def test_slots_give_distinct_ids_and_a_crashed_worker_its_id_back(tmp_path: Path) -> None:
    first = registry.claim(tmp_path, "gepa", "atlas-gepa")
    second = registry.claim(tmp_path, "gepa", "atlas-gepa")
    assert first.worker_id != second.worker_id
    assert (first.record.slot, second.record.slot) == (1, 2)
    first.release()  # as the kernel does when a worker dies
    again = registry.claim(tmp_path, "gepa", "atlas-gepa")
    assert again.worker_id == first.worker_id
    named = registry.claim(tmp_path, "gepa", "atlas-gepa", "w-7")
    with pytest.raises(StackError, match="worker id 'w-7' is in use by gepa worker pid"):
        registry.claim(tmp_path, "gepa", "atlas-gepa", "w-7")
    for lease in (second, again, named):
        lease.release()


def test_status_lists_running_workers_with_pids_groups_and_lag(
    stack_settings: Settings, tmp_path: Path
) -> None:
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "rewards", "sink")]
    env = {**os.environ, "ATLAS_HOME": str(stack_settings.home), "COLUMNS": "250"}
    try:
        eventually(
            lambda: len(registry.running(stack_settings.home)) == 3, 60, "three workers registered"
        )
        shown = subprocess.run(
            [sys.executable, "-m", "atlas.cli", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        for worker in workers:
            assert str(worker.process.pid) in shown.stdout
        ids = [r.worker_id for r in registry.running(stack_settings.home) if r.kind == "rewards"]
        assert len(set(ids)) == 2
        assert "atlas-rewards" in shown.stdout and "atlas-sink" in shown.stdout
        assert "consumer groups" in shown.stdout
    finally:
        for worker in workers:
            worker.stop()
    assert registry.running(stack_settings.home) == []
