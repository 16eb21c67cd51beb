"""`atlas agent run` against the real stack and the real local model."""

from __future__ import annotations

from typer.testing import CliRunner

from atlas.cli import app
from atlas.settings import Settings

runner = CliRunner()


def test_agent_run_prints_a_summary(stack_settings: Settings, model_dir: object) -> None:
    env = {"ATLAS_HOME": str(stack_settings.home), "COLUMNS": "200"}
    result = runner.invoke(
        app,
        [
            "agent",
            "run",
            "--task",
            "extraction",
            "--n",
            "3",
            "--mode",
            "auto",
            "--agent",
            "cli-agent",
            "--batch",
            "3",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "auto 3" in result.output
    summary = result.output.splitlines()[-2]
    assert summary.split("│")[1].strip() == "3"  # tasks
    assert summary.split("│")[-2].strip() == "3"  # delivered to Kafka


def test_agent_run_rejects_bad_arguments(stack_settings: Settings) -> None:
    env = {"ATLAS_HOME": str(stack_settings.home)}
    bad_task = runner.invoke(app, ["agent", "run", "--task", "poetry", "--n", "1"], env=env)
    assert bad_task.exit_code == 2 and "unknown task family 'poetry'" in bad_task.output
    bad_mode = runner.invoke(app, ["agent", "run", "--mode", "solo", "--n", "1"], env=env)
    assert bad_mode.exit_code == 2 and "choose auto, paired, coach or policy" in bad_mode.output
    bad_n = runner.invoke(app, ["agent", "run", "--n", "0"], env=env)
    assert bad_n.exit_code == 2
