"""The report that ends `atlas demo`: what the store says happened to the demo's agent.

Everything here reads, nothing writes but the chart: the traces, modes and dead letters the
store holds since the demo began, the job's held-out gate figures, the lineage from trigger
to published prompt version, each canary rollout's arms and decision, and a PNG of the reward
per task (each rollout's decision marked) over the rollouts' always-valid bounds on canary
minus production as the scored tasks came in.
Figures come from the store's ``latest_traces`` view, so a trace re-scored by feedback counts
once, at its latest reward.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from trainer.evaluation import GateConfig

if TYPE_CHECKING:
    from atlas.demo_rollout import RolloutRun
    from schemas.rollouts import RolloutStatus


def demo_report_rows(client: Any, agent: str, since: datetime) -> dict[str, Any]:
    from store.queries import rows_as_dicts

    params = {"agent": agent, "since": since}
    by_version = rows_as_dicts(
        client,
        """
        SELECT prompt_versions['student'] AS student_version, count() AS traces,
               avg(reward) AS mean_reward, avg(prompt_tokens + completion_tokens) AS tokens,
               countIf(mode = 'auto') / count() AS auto_share,
               countIf(escalated) / count() AS escalation_rate
        FROM latest_traces WHERE agent_id = {agent:String} AND created_at >= {since:DateTime64(3)}
        GROUP BY student_version ORDER BY student_version
        """,
        params,
    )
    by_mode = rows_as_dicts(
        client,
        """
        SELECT mode, count() AS traces, avg(reward) AS mean_reward,
               avg(prompt_tokens + completion_tokens) AS tokens,
               if(countIf(baseline_reward IS NOT NULL) = 0, NULL,
                  countIf(baseline_reward IS NOT NULL AND reward >= baseline_reward)
                  / countIf(baseline_reward IS NOT NULL)) AS non_degradation
        FROM latest_traces WHERE agent_id = {agent:String} AND created_at >= {since:DateTime64(3)}
        GROUP BY mode ORDER BY mode
        """,
        params,
    )
    timeline = rows_as_dicts(
        client,
        """
        SELECT created_at, reward, prompt_versions['student'] AS student_version, mode
        FROM latest_traces WHERE agent_id = {agent:String} AND created_at >= {since:DateTime64(3)}
        ORDER BY created_at
        """,
        params,
    )
    letters = client.query(
        "SELECT count() FROM dead_letters FINAL WHERE failed_at >= {since:DateTime64(3)}",
        parameters={"since": since},
    ).result_rows[0][0]
    return {
        "by_version": by_version,
        "by_mode": by_mode,
        "timeline": timeline,
        "dead_letters": letters,
    }


def plot_demo(
    timeline: list[dict[str, Any]], path: Path, title: str, history: list[RolloutStatus]
) -> Path:
    """The reward per task, with each rollout's decision marked, above each rollout's bounds
    on canary minus production over its scored tasks (``history``: every stored status)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bounds) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [3, 2]})
    rewards = [r["reward"] for r in timeline]
    rolling = [
        sum(rewards[max(0, i - 7) : i + 1]) / len(rewards[max(0, i - 7) : i + 1])
        for i in range(len(rewards))
    ]
    versions = sorted({r["student_version"] for r in timeline})
    for version in versions:
        xs = [i for i, r in enumerate(timeline) if r["student_version"] == version]
        ax.scatter(
            xs, [rewards[i] for i in xs], s=14, alpha=0.5, label=f"student prompt v{version}"
        )
    ax.plot(range(len(rolling)), rolling, color="black", label="rolling mean (8 tasks)")
    plot_rollouts(ax, bounds, timeline, history)
    ax.set_xlabel("task (in production order)")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    bounds.set_xlabel("scored tasks in the rollout (both arms)")
    bounds.set_ylabel("canary - production")
    bounds.set_title("always-valid bounds on the difference in mean reward (alpha 0.05)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rollouts(
    rewards: Any, bounds: Any, timeline: list[dict[str, Any]], history: list[RolloutStatus]
) -> None:
    """Each rollout's bounds over its scored tasks (a band), and its decision as a dashed line
    at the first task created after it."""
    rollouts: dict[str, list[RolloutStatus]] = {}
    for status in sorted(history, key=lambda s: s.updated_at):
        rollouts.setdefault(status.rollout_id, []).append(status)
    bounds.axhline(0, color="black", linewidth=0.8)
    for statuses in rollouts.values():
        last = statuses[-1]
        name = f"v{last.canary_version} vs v{last.production_version}"
        xs = [s.canary_count + s.production_count for s in statuses]
        bounds.fill_between(
            xs, [s.lower for s in statuses], [s.upper for s in statuses], alpha=0.3, label=name
        )
        observed = [_difference(s) for s in statuses]
        bounds.plot(xs, observed, linewidth=1)  # the observed difference in means
        if last.state != "running":
            bounds.annotate(last.state.replace("_", " "), (xs[-1], observed[-1]), fontsize=8)
            decided = _utc(last.updated_at)
            after = [i for i, r in enumerate(timeline) if _utc(r["created_at"]) >= decided]
            if after:
                rewards.axvline(after[0] - 0.5, color="tab:red", linestyle="--")
                rewards.annotate(
                    f"v{last.canary_version} {last.state}", (after[0], 1.0), fontsize=8
                )
    if rollouts:
        bounds.legend(fontsize=8, loc="upper right")


def _difference(status: RolloutStatus) -> float:
    if status.canary_mean is None or status.production_mean is None:
        return 0.0
    return status.canary_mean - status.production_mean


def _utc(moment: datetime) -> datetime:
    # The store's DateTime64 columns come back naive; contracts' instants are aware (UTC).
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def rollout_table(runs: list[RolloutRun], stored: list[RolloutStatus]) -> Table:
    """Each rollout the demo ran, one column each: its arms, the share of production's right
    answers its canary kept on the same tasks, and what ended it (the stored figures)."""
    table = Table("", *(run.name for run in runs), title="Canary rollouts")
    latest = {s.rollout_id: s for s in stored}
    found = [run.decision or latest.get(run.canary.rollout_id or "") for run in runs]
    rows: list[tuple[str, list[str]]] = [
        ("versions", [
            f"v{run.canary.version}" + (f" vs v{s.production_version}" if s else "")
            for run, s in zip(runs, found, strict=True)
        ]),
        ("tasks", [str(run.tasks) for run in runs]),
        ("canary mean (n)", [_mean(s.canary_mean, s.canary_count) if s else "" for s in found]),
        ("production mean (n)", [
            _mean(s.production_mean, s.production_count) if s else "" for s in found
        ]),
        ("difference", [f"[{s.lower:+.3f}, {s.upper:+.3f}]" if s else "" for s in found]),
        ("right answers kept (n)", [_mean(s.retention, s.right_count) if s else "" for s in found]),
        ("decision", [run.state for run in runs]),
    ]  # fmt: skip
    for label, cells in rows:
        table.add_row(label, *cells)
    return table


def _mean(mean: float | None, count: int) -> str:
    return f"- ({count})" if mean is None else f"{mean:.3f} ({count})"


def report(
    console: Console,
    store: Any,
    agent: str,
    since: datetime,
    job: Any,
    home: Path,
    gate_minimums: tuple[float, float],
    rollouts: list[RolloutRun],
) -> None:
    """Print the demo's tables and lineage, and write its chart under ``home``;
    ``gate_minimums`` are the non-degradation and retention the demo's GEPA job's gate (and
    its rollouts) required, ``rollouts`` the canaries it ran."""
    from store.queries import prompt_history, rollout_statuses, stored_trigger

    rows = demo_report_rows(store, agent, since)
    versions = Table(
        "student prompt",
        "traces",
        "mean reward",
        "tokens/task",
        "auto share",
        "escalated",
        title="Reward before/after the new prompt",
    )
    for r in rows["by_version"]:
        versions.add_row(
            f"v{r['student_version']}",
            str(r["traces"]),
            f"{r['mean_reward']:.3f}",
            f"{r['tokens']:.0f}",
            f"{r['auto_share']:.0%}",
            f"{r['escalation_rate']:.0%}",
        )
    console.print(versions)
    modes = Table(
        "mode",
        "traces",
        "mean reward",
        "tokens/task",
        "non-degradation",
        title="The closed loop by mode",
    )
    for r in rows["by_mode"]:
        nd = (
            ""
            if r["non_degradation"] is None or r["mode"] == "auto"
            else f"{r['non_degradation']:.3f}"
        )
        modes.add_row(
            r["mode"], str(r["traces"]), f"{r['mean_reward']:.3f}", f"{r['tokens']:.0f}", nd
        )
    console.print(modes)
    taught = [r for r in rows["by_mode"] if r["mode"] != "auto"]
    auto = [r for r in rows["by_mode"] if r["mode"] == "auto"]
    if taught and auto:
        saving = 1 - auto[0]["tokens"] / (
            sum(r["tokens"] * r["traces"] for r in taught) / sum(r["traces"] for r in taught)
        )
        console.print(f"token savings of auto over taught modes: {saving:.0%} per task")
    metrics = job.metrics
    gate = Table(
        "held-out (n={})".format(int(metrics.get("heldout_n", 0))),
        "production",
        "candidate",
        "non-degradation",
        "right kept",
        title="The gate",
    )
    if "heldout_current_reward" in metrics:
        gate.add_row(
            "mean reward",
            f"{metrics['heldout_current_reward']:.3f}",
            f"{metrics['heldout_candidate_reward']:.3f}",
            f"{metrics['heldout_non_degradation']:.3f}",
            f"{metrics['heldout_retention']:.3f}" if "heldout_retention" in metrics else "-",
        )
    console.print(gate)
    product = GateConfig()
    console.print(
        f"the demo's gate: candidate mean >= production + 0.01, non-degradation >="
        f" {gate_minimums[0]} and >= {gate_minimums[1]} of the examples production gets right"
        f" kept right (the product's defaults: {product.min_non_degradation} and"
        f" {product.min_retention}); its rollouts require the same on live tasks"
    )
    trigger = stored_trigger(store, job.trigger_id)
    console.print(
        f"lineage: trigger {job.trigger_id} ({trigger.reason if trigger else 'not stored yet'})"
        f" -> job {job.job_id} {job.state}"
        + (f" -> student prompt v{job.result_version}" if job.result_version else "")
    )
    for version in prompt_history(store, agent, "student"):
        console.print(
            f"  v{version.version} (parent v{version.parent_version}, {version.source}):"
            f" {len(version.demonstrations)} demonstrations"
            + ("" if version.heldout_reward is None else f", held-out {version.heldout_reward:.3f}")
        )
    history = rollout_statuses(store, agent, "student", latest=False)
    if rollouts:
        console.print(rollout_table(rollouts, rollout_statuses(store, agent, "student")))
        for run in rollouts:
            if run.decision is not None:
                console.print(f"  {run.name}: {run.decision.reason}", highlight=False)
    console.print(f"dead letters during the demo: {rows['dead_letters']}")
    chart = plot_demo(rows["timeline"], home / "demo.png", f"{agent}: reward per task", history)
    console.print(f"chart: {chart}")
