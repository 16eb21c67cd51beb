"""Rendering monitoring results: rich tables on the terminal and a PNG chart."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


MAX_DURATION = timedelta(days=3660)


def parse_duration(text: str) -> timedelta:
    """'30m', '24h', '7d' -> timedelta (at most ten years); ValueError saying what is accepted
    otherwise."""
    found = DURATION.match(text.strip())
    if not found:
        raise ValueError(f"invalid duration {text!r}: use a number and s, m, h, d or w (e.g. 24h)")
    try:
        duration = timedelta(**{UNITS[found.group(2)]: float(found.group(1))})
    except OverflowError:
        duration = MAX_DURATION * 2
    if duration > MAX_DURATION:
        raise ValueError(f"duration {text!r} is longer than ten years: use e.g. 3650d at most")
    return duration


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    columns = columns or (list(rows[0]) if rows else [])
    out = Table(*columns, title=title, title_justify="left")
    for row in rows:
        out.add_row(*(_fmt(row[c]) for c in columns))
    if not rows:
        out.add_row(*(["(none)"] + [""] * (len(columns) - 1)) if columns else ["(none)"])
    return out


# The columns of the judges-vs-humans table; CONFUSION is made of tp, fp, fn and tn.
CONFUSION = "tp/fp/fn/tn"
HUMAN_AGREEMENT_COLUMNS = ["agent_id", "day", "judge", "n", "spearman", "kappa", "mae", CONFUSION]


def human_agreement_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of `human_agreement` with the four cells of the confusion in one column."""
    return [{**r, CONFUSION: f"{r['tp']}/{r['fp']}/{r['fn']}/{r['tn']}"} for r in rows]


def print_monitor(
    console: Console, results: dict[str, list[dict[str, Any]]], threshold: float
) -> None:
    """Every result of `store.monitoring.monitor` as a table; ``threshold`` is the one the
    judges-vs-humans confusion and kappa were counted at."""
    console.print(
        table(
            "Agents",
            results["summary"],
            [
                "agent_id",
                "traces",
                "mean_reward",
                "non_degradation",
                "tokens_per_task",
                "paired_tokens_per_task",
                "escalation_rate",
                "with_feedback",
                "modes",
            ],
        )
    )
    console.print(table("Reward by hour and prompt version", results["reward_by_hour"]))
    console.print(table("Tokens and reward by mode", results["tokens_by_mode"]))
    console.print(
        table("Inter-judge agreement (scores within 0.5 of each other)", results["judge_agreement"])
    )
    console.print(
        table(
            f"Judges vs humans (pass: score >= {threshold:g}; final: reward before feedback)",
            human_agreement_rows(results["human_agreement"]),
            HUMAN_AGREEMENT_COLUMNS,
        )
    )
    console.print(table("Dead letters", results["dead_letters"]))


def plot_monitor(results: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reward_ax, tokens_ax, kappa_ax) = plt.subplots(1, 3, figsize=(18, 4.5))
    by_agent: dict[str, list[dict[str, Any]]] = {}
    for row in results["reward_by_hour"]:
        by_agent.setdefault(row["agent_id"], []).append(row)
    for agent, rows in by_agent.items():
        hours = [r["hour"] for r in rows]
        reward_ax.plot(hours, [r["mean"] for r in rows], marker="o", label=agent)
        reward_ax.fill_between(
            hours, [r["p10"] for r in rows], [r["p90"] for r in rows], alpha=0.15
        )
    reward_ax.set_title("reward by hour (mean, p10-p90)")
    reward_ax.set_ylim(-0.02, 1.02)
    reward_ax.legend(fontsize=8)
    reward_ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    modes = results["tokens_by_mode"]
    labels = [f"{r['agent_id']}\n{r['mode']}" for r in modes]
    tokens_ax.bar(labels, [r["tokens_per_task"] for r in modes], color="tab:orange")
    tokens_ax.set_title("tokens per task by mode")
    tokens_ax.tick_params(axis="x", labelsize=7)
    by_judge: dict[str, list[dict[str, Any]]] = {}
    for row in results["human_agreement"]:
        by_judge.setdefault(f"{row['agent_id']}/{row['judge']}", []).append(row)
    for label, rows in by_judge.items():
        # an undefined kappa (every score on one side) is a gap in the line, not a zero
        kappas = [math.nan if r["kappa"] is None else r["kappa"] for r in rows]
        kappa_ax.plot([r["day"] for r in rows], kappas, marker="o", label=label)
    kappa_ax.set_title("judges vs humans: Cohen's kappa by day")
    kappa_ax.set_ylim(-1.02, 1.02)
    if by_judge:
        # every day shown, those whose kappa is undefined too (autoscaling skips them)
        days = [r["day"] for r in results["human_agreement"]]
        kappa_ax.set_xlim(min(days) - timedelta(days=1), max(days) + timedelta(days=1))
        kappa_ax.legend(fontsize=8)
    kappa_ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def alerts_table(alerts: list[Any], title: str = "Firing alerts") -> Table:
    """Alerts (``schemas.alerts.Alert``) as a table: who, what, since when, the figures."""
    out = Table("agent", "kind", "since", "value", "threshold", "message", title=title)
    out.title_justify = "left"
    for alert in alerts:
        out.add_row(
            alert.agent_id,
            alert.kind,
            f"{alert.fired_at:%Y-%m-%d %H:%M:%S}",
            f"{alert.recent_value:.3f}",
            f"{alert.threshold:.3f}",
            alert.message,
        )
    if not alerts:
        out.add_row("(none)", "", "", "", "", "")
    return out
