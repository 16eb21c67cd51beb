"""The demo's rollouts, without a stack: its configs load as the workers load them, the worse
candidate is what it claims (wrong answers, a canary numbered after every version), and the
report's table and chart come out of stored statuses. The demo itself runs end to end in
tests/test_readme.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atlas.demo import FULL, QUICK, DemoPlan, write_configs
from atlas.demo_report import plot_rollouts, rollout_table
from atlas.demo_rollout import RolloutRun, worse_candidate, wrong_demonstrations
from runtime.prompts import StaticPrompts
from runtime.tasks import generate
from schemas.models import CANARY, PromptVersion
from schemas.rollouts import RolloutStatus
from streams.rollout_config import load_rollout_config
from trainer.gepa_config import load_gepa_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("plan", [FULL, QUICK], ids=["full", "quick"])
def test_the_demo_configs_load_with_its_canary_and_test(plan: DemoPlan, tmp_path: Path) -> None:
    configs = write_configs(CONFIGS, tmp_path, plan.configs())
    rollout = load_rollout_config(configs)
    assert rollout.test.min_samples == plan.rollout_min_samples
    assert rollout.test.tuned_samples == plan.rollout_min_samples
    assert rollout.test.alpha == load_rollout_config(CONFIGS).test.alpha  # the product's alpha
    gepa = load_gepa_config(configs)
    assert gepa.canary_share == plan.canary_share > 0
    # Each arm can reach the test's minimum within the tasks a rollout may run.
    assert plan.rollout_tasks * min(plan.canary_share, 1 - plan.canary_share) > (
        plan.rollout_min_samples
    )


def test_wrong_demonstrations_never_answer_their_own_input() -> None:
    shots = wrong_demonstrations("extraction", 3)
    assert len(shots) == 3
    references = {t.input: t.reference for t in generate("extraction", "test", 12, seed=23)}
    for shot in shots:
        assert shot.output and shot.output != references[shot.input]
        assert shot.output in {r for r in references.values()}  # a real city, wrongly placed


class _Labelled(StaticPrompts):
    """Seeds plus published labels, as the prompt subscriber answers them."""

    def __init__(self, published: dict[tuple[str, str], PromptVersion]) -> None:
        super().__init__({"student": "Answer.", "teacher": "Review."})
        self.published = published

    def labels(self, agent_id: str) -> dict[tuple[str, str], PromptVersion]:
        return self.published

    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        base = super().snapshot(agent_id)
        base.update({r: v for (r, label), v in self.published.items() if label == "production"})
        return base


def test_the_worse_candidate_is_a_canary_after_every_version() -> None:
    production = PromptVersion(
        agent_id="a", role="student", version=1, text="Answer.", source="gepa"
    )
    queued_newer = production.model_copy(update={"version": 4, "label": "staging"})
    prompts = _Labelled(
        {("student", "production"): production, ("student", "staging"): queued_newer}
    )
    worse = worse_candidate(prompts, "a", "extraction", 0.5)  # type: ignore[arg-type]
    assert worse.label == CANARY and worse.traffic_share == 0.5 and worse.rollout_id
    assert worse.version == 5 and worse.parent_version == 1 and worse.source == "manual"
    assert worse.text == "Answer." and len(worse.demonstrations) == 3
    again = worse_candidate(prompts, "a", "extraction", 0.5)  # type: ignore[arg-type]
    assert again.rollout_id != worse.rollout_id  # each canary is a rollout of its own


def _status(rollout: str, state: str, n: int, lower: float, upper: float, at: datetime):  # type: ignore[no-untyped-def]
    return RolloutStatus(
        agent_id="a", role="student", rollout_id=rollout, canary_version=2,
        production_version=1, state=state, started_at=at, updated_at=at,  # type: ignore[arg-type]
        canary_count=n, canary_mean=0.2, production_count=n, production_mean=0.9,
        lower=lower, upper=upper, alpha=0.05, reason=f"{state} after {n}", paired_count=n,
        right_count=n // 2, retention=0.25,
    )  # fmt: skip


def test_the_report_shows_each_rollout_and_draws_its_bounds(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.console import Console

    start = datetime(2026, 11, 27, 12, tzinfo=UTC)
    history = [
        _status("r1", "running", 8, -1.0, 0.4, start),
        _status("r1", "running", 16, -0.9, -0.1, start + timedelta(seconds=10)),
        _status("r1", "rolled_back", 20, -0.9, -0.2, start + timedelta(seconds=20)),
    ]
    canary = PromptVersion(
        agent_id="a", role="student", version=2, text="x", source="manual", label=CANARY,
        rollout_id="r1", traffic_share=0.5,
    )  # fmt: skip
    runs = [
        RolloutRun("worse candidate", canary, 40, history[-1]),
        RolloutRun("another", canary.model_copy(update={"rollout_id": "r9"}), 160, None),
    ]
    console = Console(record=True, width=80)
    console.print(rollout_table(runs, [history[-1]]))
    text = console.export_text()
    assert "worse candidate" in text and "rolled back" in text and "[-0.900, -0.200]" in text
    assert "v2 vs v1" in text and "0.250 (10)" in text  # production's right answers kept
    assert "ended undecided" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    naive = [  # the store's timestamps come back naive
        {"created_at": (start + timedelta(seconds=s)).replace(tzinfo=None), "reward": 0.5}
        for s in (5, 15, 25, 35)
    ]
    fig, (ax, bounds) = plt.subplots(2, 1)
    plot_rollouts(ax, bounds, naive, history)
    assert len(bounds.collections) == 1  # one band, for the one rollout
    [decision] = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert decision.get_xdata()[0] == pytest.approx(1.5)  # before the first task after it
    plt.close(fig)


def test_an_undecided_rollout_says_the_demo_ended_it() -> None:
    canary = PromptVersion(
        agent_id="a", role="student", version=2, text="x", source="gepa", label=CANARY,
        rollout_id="r2", traffic_share=0.5,
    )  # fmt: skip
    assert RolloutRun("learned prompt", canary, 160, None).outcome == (
        "undecided after 160 tasks: ended by the demo"
    )
