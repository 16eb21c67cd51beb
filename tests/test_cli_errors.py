"""What an operator can get wrong gets one line that says what and what to do, never a
traceback: broken or invalid configs, a corrupt stack record, a bad setting, an absurd window,
a missing file. Usage errors exit with status 2. Run as a real process, as a person would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atlas.settings import PROJECT_CONFIGS


def atlas(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atlas.cli", *args],
        env={**os.environ, "COLUMNS": "300", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    target = tmp_path / "configs"
    shutil.copytree(PROJECT_CONFIGS, target)
    return target


def _broken_yaml(configs: Path) -> None:
    (configs / "gepa.yaml").write_text("budget: 40\nreflection: [unclosed\n")


def _invalid_config(configs: Path) -> None:
    (configs / "gepa.yaml").write_text("budget: -5\n")


def _corrupt_stack(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "stack.json").write_text('{"kafka": {"pid": 12')


CASES = [
    (
        "broken YAML",
        ["retrain", "gepa", "--agent", "a"],
        _broken_yaml,
        None,
        2,
        r"gepa\.yaml:3: not valid YAML",
    ),
    (
        "invalid config",
        ["retrain", "gepa", "--agent", "a"],
        _invalid_config,
        None,
        2,
        r"gepa\.yaml: budget: Input should be greater than or equal to 1",
    ),
    (
        "missing config folder",
        ["retrain", "gepa", "--agent", "a"],
        None,
        {"ATLAS_CONFIG_DIR": "/nonexistent/configs"},
        2,
        r"/nonexistent/configs/gepa\.yaml: no such config file; ATLAS_CONFIG_DIR must name",
    ),
    ("corrupt stack.json", ["status"], None, None, 1, r"stack\.json is unreadable .* delete it"),
    (
        "absurd window",
        ["monitor", "--since", "1000000d"],
        None,
        None,
        2,
        r"'1000000d' is longer than ten years",
    ),
    (
        "bad setting",
        ["status"],
        None,
        {"ATLAS_MAX_FIELD_BYTES": "lots"},
        2,
        r"invalid setting max_field_bytes: Input should be a valid integer",
    ),
    (
        "missing file",
        ["prompts", "set", "--agent", "a", "--file", "/nonexistent/prompt.txt"],
        None,
        None,
        2,
        r"/nonexistent/prompt\.txt' does not exist",
    ),
]


@pytest.mark.parametrize(
    ("args", "breaks_configs", "env", "code", "says"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_operator_mistakes_give_one_line_and_the_right_status(
    tmp_path: Path,
    configs: Path,
    args: list[str],
    breaks_configs: object,
    env: dict[str, str] | None,
    code: int,
    says: str,
) -> None:
    home = tmp_path / "home"
    if callable(breaks_configs):
        breaks_configs(configs)
    if args == ["status"] and env is None:
        _corrupt_stack(home)
    result = atlas(args, {"ATLAS_HOME": str(home), "ATLAS_CONFIG_DIR": str(configs), **(env or {})})
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    message = " ".join(lines)
    assert re.search(says, message), message
    if "error:" in message:
        assert len([line for line in lines if "error:" in line]) == 1
