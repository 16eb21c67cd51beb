"""The CLI's pieces without a stack: the `--since` parser, one Settings per invocation read
from the environment at invocation time, the rollback rules moved out of the CLI, and the
version look-ups in the store (one query, nothing outside the column's type asked)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from atlas.cli import app
from atlas.commands import common
from atlas.commands.common import Window, parse_since, version_cells
from runtime import checkpoints
from runtime.checkpoints import rollback_checkpoint
from runtime.prompts import NoParentVersion, VersionNotStored, restored_prompt
from schemas.models import CheckpointEvent, Demonstration, PromptVersion
from schemas.signing import PRIVATE_KEY_FILE
from store.queries import checkpoint_version, prompt_version

runner = CliRunner()


def test_since_keeps_the_text_and_the_length() -> None:
    window = parse_since("2h")
    assert window == Window("2h", timedelta(hours=2))
    assert str(window) == "2h"  # what --help shows as the default and the trigger's reason says
    assert parse_since(window) is window


@pytest.mark.parametrize("text", ["xx", "5x", "1000000d", ""])
def test_a_bad_since_is_a_usage_error_naming_the_option(text: str) -> None:
    with pytest.raises(typer.BadParameter) as raised:
        parse_since(text)
    assert raised.value.param_hint == "--since"


def test_the_cli_rejects_a_bad_since_before_touching_settings_or_services(
    tmp_path: Path,
) -> None:
    env = {"ATLAS_HOME": str(tmp_path), "ATLAS_MAX_FIELD_BYTES": "lots", "COLUMNS": "200"}
    result = runner.invoke(app, ["monitor", "--since", "1000000d"], env=env)
    assert result.exit_code == 2
    assert "Invalid value for --since: duration '1000000d' is longer than ten years" in (
        result.output
    )


def test_help_needs_no_valid_settings(tmp_path: Path) -> None:
    env = {"ATLAS_HOME": str(tmp_path), "ATLAS_MAX_FIELD_BYTES": "lots"}
    assert runner.invoke(app, ["status", "--help"], env=env).exit_code == 0
    bad = runner.invoke(app, ["status"], env=env)
    assert bad.exit_code == 2
    assert "invalid setting max_field_bytes" in bad.output


def test_one_settings_per_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    class Counted(common.Settings):
        def model_post_init(self, context: Any, /) -> None:
            made.append(self)
            super().model_post_init(context)

    monkeypatch.setattr(common, "Settings", Counted)
    result = runner.invoke(app, ["status"], env={"ATLAS_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    assert "never started" in result.output
    assert len(made) == 1


def test_settings_come_from_the_environment_of_each_invocation(tmp_path: Path) -> None:
    for name in ("first", "second"):
        home = tmp_path / name
        result = runner.invoke(app, ["signing", "init"], env={"ATLAS_HOME": str(home)})
        assert result.exit_code == 0, result.output
        assert (home / "secrets" / PRIVATE_KEY_FILE).exists()
    again = runner.invoke(app, ["signing", "init"], env={"ATLAS_HOME": str(tmp_path / "first")})
    assert again.exit_code == 2 and "--force replaces it" in again.output


def test_the_cli_lists_its_commands_in_their_old_order() -> None:
    command = typer.main.get_command(app)
    assert list(command.commands) == [  # type: ignore[attr-defined]
        "up",
        "down",
        "status",
        "monitor",
        "replay",
        "demo",
        "agent",
        "retrain",
        "jobs",
        "prompts",
        "checkpoints",
        "memory",
        "rollout",
        "signing",
        "worker",
        "proxy",
        "console",
    ]


def prompt(version: int, parent: int | None, text: str = "t") -> PromptVersion:
    return PromptVersion(
        agent_id="a",
        role="teacher",
        version=version,
        parent_version=parent,
        text=text,
        source="gepa" if version else "seed",
        demonstrations=[Demonstration(input="1+1", output="2")] if version else [],
    )


def never(version: int) -> None:
    raise AssertionError(f"the store was asked for v{version}")


def test_a_prompt_rollback_restores_the_parent_by_default() -> None:
    stored = {2: prompt(2, 1, "two")}
    restored = restored_prompt(prompt(3, 2), None, prompt(0, None, "seed"), stored.get)
    assert restored.text == "two" and restored.demonstrations


def test_a_prompt_rollback_to_zero_is_the_seed_and_asks_no_store() -> None:
    restored = restored_prompt(prompt(3, 2), 0, prompt(0, None, "seed"), never)
    assert restored.text == "seed" and restored.demonstrations == []


def test_a_prompt_rollback_says_why_it_cannot_be_done() -> None:
    with pytest.raises(NoParentVersion, match=r"^a/teacher v0 has no parent to roll back to$"):
        restored_prompt(prompt(0, None), None, prompt(0, None), never)
    with pytest.raises(VersionNotStored, match=r"^no stored version 7 of a/teacher$"):
        restored_prompt(prompt(3, 2), 7, prompt(0, None), {}.get)


def checkpoint(version: int, parent: int | None) -> CheckpointEvent:
    return CheckpointEvent(
        agent_id="a",
        role="student",
        version=version,
        parent_version=parent,
        uri=f"file:///ckpt/v{version}",
        base_model="base",
        sha256={"model.safetensors": f"{version:064x}"},
        source="grpo",
    )


def test_a_checkpoint_rollback_is_a_child_of_the_current_one(tmp_path: Path) -> None:
    stored = {1: checkpoint(1, 0)}
    restored, event = rollback_checkpoint(
        "a", "student", checkpoint(2, 1), None, tmp_path, stored.get
    )
    assert restored == 1
    assert (event.version, event.parent_version, event.source) == (3, 2, "rollback")
    assert (event.uri, event.sha256, event.base_model) == (
        stored[1].uri,
        stored[1].sha256,
        "base",
    )


def test_a_checkpoint_rollback_to_zero_serves_the_base_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "default_model_dir", lambda cache: cache / "base-model")
    restored, event = rollback_checkpoint("a", "student", checkpoint(1, 0), None, tmp_path, never)
    assert restored == 0
    assert event.uri == f"file://{tmp_path / 'base-model'}" and event.sha256 == {}
    assert (event.version, event.parent_version) == (2, 1)


def test_a_checkpoint_rollback_says_why_it_cannot_be_done(tmp_path: Path) -> None:
    with pytest.raises(NoParentVersion, match=r"^a/student runs its base model: nothing to"):
        rollback_checkpoint("a", "student", None, None, tmp_path, never)
    with pytest.raises(NoParentVersion, match=r"^a/student v1 has no parent$"):
        rollback_checkpoint("a", "student", checkpoint(1, None), None, tmp_path, never)
    with pytest.raises(VersionNotStored, match=r"^no stored checkpoint v5 of a/student$"):
        rollback_checkpoint("a", "student", checkpoint(2, 1), 5, tmp_path, {}.get)


class FakeResult:
    def __init__(self, rows: list[dict[str, Any]]):
        self.column_names = list(rows[0]) if rows else []
        self.result_rows = [tuple(row.values()) for row in rows]


class FakeClient:
    """Answers every query with ``rows`` and remembers what it was asked."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, parameters: dict[str, Any]) -> FakeResult:
        self.asked.append((sql, parameters))
        return FakeResult(self.rows)


def test_a_stored_version_is_one_query_for_that_version() -> None:
    row = prompt(2, 1).model_dump()
    client = FakeClient([row])
    found = prompt_version(client, "a", "teacher", 2)  # type: ignore[arg-type]
    assert found == PromptVersion(**row)
    ((sql, parameters),) = client.asked
    assert "version = {version:Int32}" in sql
    assert parameters == {"agent": "a", "role": "teacher", "version": 2}
    assert prompt_version(FakeClient([]), "a", "teacher", 9) is None  # type: ignore[arg-type]
    ckpt = checkpoint(4, 3).model_dump()
    found_ckpt = checkpoint_version(FakeClient([ckpt]), "a", "student", 4)  # type: ignore[arg-type]
    assert found_ckpt == CheckpointEvent(**ckpt)


@pytest.mark.parametrize("version", [2**31, -(2**31) - 1, 10**30])
def test_a_version_no_column_can_hold_asks_nothing(version: int) -> None:
    client = FakeClient([])
    assert prompt_version(client, "a", "teacher", version) is None  # type: ignore[arg-type]
    assert checkpoint_version(client, "a", "student", version) is None  # type: ignore[arg-type]
    assert client.asked == []


def test_both_version_lists_show_the_same_lineage_columns() -> None:
    shown = prompt(3, 2).model_copy(update={"heldout_reward": 0.8125, "baseline_reward": None})
    cells = version_cells(shown, in_use=True)
    assert cells[:4] == ["teacher", "3 *", "2", "gepa"]
    assert cells[5:] == ["0.812", ""]
    assert version_cells(checkpoint(0, None), in_use=False)[:4] == ["student", "0", "", "grpo"]
