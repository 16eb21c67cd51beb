"""Scenarios of the fault suite (``benchmarks/faults.py``) that fit CI's time, on the session's
real stack: under a steady load with two reward workers and a sink, the broker and then the
sink are killed with SIGKILL and restarted; nothing is lost, nothing duplicated, and every
worker keeps running. (Worker kills, store outages and malformed floods are covered by
test_stream_e2e.py and test_hostile_input.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from atlas.demo import write_configs
from atlas.settings import Settings
from benchmarks.faults import Rig, run_traffic_scenario, traffic_faults


@pytest.mark.parametrize("scenario", ["kill -9 broker, restart", "kill -9 sink"])
def test_nothing_is_lost_or_duplicated_when_a_part_crashes(
    stack_settings: Settings, tmp_path: Path, scenario: str
) -> None:
    configs = write_configs(
        stack_settings.config_dir, tmp_path / "configs", {"retrain_policy": {"enabled": False}}
    )
    rig = Rig(stack_settings, tmp_path, configs)
    try:
        time.sleep(5)  # the workers join their groups
        outcome = run_traffic_scenario(rig, scenario, traffic_faults(rig)[scenario], 50, 10)
    finally:
        rig.stop()
    print(f"\n{outcome}")
    assert (outcome.sent, outcome.stored, outcome.lost, outcome.duplicated) == (500, 500, 0, 0)
    assert outcome.kept_running
