"""Rendering monitoring results: rich tables on the terminal and a PNG chart."""

from __future__ import annotations

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


def print_monitor(console: Console, results: dict[str, list[dict[str, Any]]]) -> None:
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
    console.print(table("Judge agreement (scores within 0.5)", results["judge_agreement"]))
    console.print(table("Dead letters", results["dead_letters"]))


def plot_monitor(results: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reward_ax, tokens_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
