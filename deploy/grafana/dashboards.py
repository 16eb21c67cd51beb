"""The Grafana dashboard of atlas-stream, as code: one definition (``PANELS``), built with
Grafana's foundation SDK (``grafana-foundation-sdk``) into ``dashboards/atlas-stream.json``.

Regenerate with ``python -m deploy.grafana.dashboards``; ``tests/test_grafana.py`` fails when
the committed JSON is not what this module builds, and runs every ClickHouse panel's SQL
(Grafana's macros expanded for a fixed time range) against a real store.

Panels read the store through ClickHouse's datasource (``grafana-clickhouse-datasource``,
provisioned with uid ``atlas-clickhouse``) and, for consumer lag, which is not in ClickHouse,
Prometheus (uid ``atlas-prometheus``, metric ``atlas_consumer_lag`` by group, topic and
partition, as the workers expose it). Where ``store/monitoring.py`` already answers a question,
the panel runs its SQL file from ``store/sql/``, its query parameters turned into Grafana
macros and variables (``GRAFANA_PARAMETERS``), so the CLI and the dashboard cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import (
    barchart,
    bargauge,
    dashboard,
    prometheus,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    GridPos,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
)

from store.monitoring import DEFAULT_THRESHOLD, PARAMETER, load_sql

OUTPUT = Path(__file__).parent / "dashboards" / "atlas-stream.json"
CLICKHOUSE = DataSourceRef(type_val="grafana-clickhouse-datasource", uid="atlas-clickhouse")
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="atlas-prometheus")
# Each ClickHouse query parameter of store/sql/ as Grafana writes it. `agent`'s "All" is the
# custom all-value '' (inserted as it is, unformatted), which the files read as "every agent";
# one agent is inserted by `sqlstring` as a quoted, quote-escaped literal.
GRAFANA_PARAMETERS = {
    "since": "$__fromTime_ms",
    "agent": "${agent:sqlstring}",
    "threshold": "toFloat64(${threshold:sqlstring})",
}
AGENTS_SQL = "SELECT DISTINCT agent_id FROM scored_traces ORDER BY agent_id"
THRESHOLDS = ("0.5", "0.3", "0.7", "0.9")
Visual = Literal["timeseries", "table", "bargauge", "barchart"]


def monitoring_sql(name: str) -> str:
    """``store/sql/<name>.sql`` with its query parameters written as Grafana macros and
    variables; KeyError for a parameter Grafana has no counterpart for."""
    return PARAMETER.sub(lambda found: GRAFANA_PARAMETERS[found[1]], load_sql(name)).strip()


def over(name: str, select: str, tail: str = "") -> str:
    """A projection of a monitoring query: ``SELECT select FROM (<file>) tail``."""
    return f"SELECT {select}\nFROM (\n{monitoring_sql(name)}\n)" + (f"\n{tail}" if tail else "")


@dataclass(frozen=True)
class SqlPanel:
    """A ClickHouse panel: its SQL (with Grafana macros) and the columns it must return."""

    title: str
    description: str
    visual: Visual
    sql: str
    columns: tuple[str, ...]
    unit: str = ""
    limits: tuple[float, float] | None = None
    # Values from which a bar turns green (the gate's bar for non-degradation), else none.
    green_from: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def time_series(self) -> bool:
        return self.visual == "timeseries"


def columns(names: str) -> tuple[str, ...]:
    return tuple(names.split())


def share_by_agent(
    title: str, description: str, column: str, green_from: float | None = None
) -> SqlPanel:
    """A bar per agent of one share (0..1) from the agents' summary."""
    return SqlPanel(
        title,
        description,
        "bargauge",
        over("summary", f"agent_id, {column}"),
        ("agent_id", column),
        unit="percentunit",
        limits=(0.0, 1.0),
        green_from=green_from,
    )


PANELS: tuple[SqlPanel, ...] = (
    SqlPanel(
        "Reward by agent and prompt version",
        "Mean reward per hour of the traces' latest revisions, one line per agent and "
        "(student, teacher) prompt version (store/sql/reward_by_hour.sql).",
        "timeseries",
        over(
            "reward_by_hour",
            "hour AS time, concat(agent_id, ' student v', toString(student_version),"
            " ' teacher v', toString(teacher_version)) AS version, mean AS reward",
            "WHERE hour <= $__toTime\nORDER BY time, version",
        ),
        ("time", "version", "reward"),
        limits=(0.0, 1.0),
    ),
    SqlPanel(
        "Agents",
        "Per agent: traces, mean reward, non-degradation, tokens per task, escalation rate, "
        "traces with feedback, modes (store/sql/summary.sql, as `atlas monitor` shows it).",
        "table",
        monitoring_sql("summary"),
        columns(
            "agent_id traces mean_reward taught non_degradation tokens_per_task"
            " paired_tokens_per_task escalation_rate with_feedback modes"
        ),
    ),
    share_by_agent(
        "Non-degradation by agent",
        "Share of taught answers (paired or coach) whose reward is at least their baseline's; "
        "green from 97%, the gate's bar (store/sql/summary.sql).",
        "non_degradation",
        green_from=0.97,
    ),
    share_by_agent(
        "Escalation rate by agent",
        "Share of traces whose judges escalated to the arbiter (store/sql/summary.sql).",
        "escalation_rate",
    ),
    SqlPanel(
        "Tokens per task by mode",
        "Prompt + completion tokens per task, by agent and mode (store/sql/tokens_by_mode.sql).",
        "barchart",
        over(
            "tokens_by_mode",
            "concat(agent_id, ' ', mode) AS agent_mode, tokens_per_task, mean_reward",
            "ORDER BY agent_mode",
        ),
        ("agent_mode", "tokens_per_task", "mean_reward"),
        options={"x_field": "agent_mode"},
    ),
    SqlPanel(
        "Judge agreement",
        "Share of traces whose judges' scores lie within 0.5 of each other, and judges per "
        "trace (store/sql/judge_agreement.sql).",
        "table",
        monitoring_sql("judge_agreement"),
        ("agent_id", "traces", "agreement", "judges_per_trace"),
    ),
    SqlPanel(
        "Judges vs humans",
        "On traces with feedback, per agent, day and judge: n, Spearman, kappa and confusion at "
        "the $threshold variable, MAE (store/sql/human_agreement.sql).",
        "table",
        monitoring_sql("human_agreement"),
        ("agent_id", "day", "judge", "n", "spearman", "kappa", "mae", "tp", "fp", "fn", "tn"),
    ),
    SqlPanel(
        "Dead letters by source and processor",
        "Messages dead-lettered since the range's start, with one example reason "
        "(store/sql/dead_letters.sql).",
        "table",
        monitoring_sql("dead_letters"),
        ("source_topic", "processor", "messages", "example_reason"),
    ),
    SqlPanel(
        "Dead letters over time",
        "Messages dead-lettered per interval, by the processor that refused them.",
        "timeseries",
        "SELECT $__timeInterval(failed_at) AS time, toString(processor) AS processor,"
        " count() AS dead_letters\nFROM dead_letters FINAL\nWHERE $__timeFilter(failed_at)\n"
        "GROUP BY time, processor\nORDER BY time, processor",
        ("time", "processor", "dead_letters"),
    ),
    SqlPanel(
        "Job outcomes",
        "Learning jobs by kind and latest state (SUCCEEDED, REJECTED by the gate, FAILED, or "
        "still QUEUED/RUNNING), for jobs whose latest report falls in the range.",
        "barchart",
        "SELECT concat(kind, ' ', state) AS outcome, count() AS jobs\nFROM (\n"
        "    SELECT job_id, toString(kind) AS kind, toString(argMax(state, seq)) AS state,\n"
        "           max(updated_at) AS updated\n    FROM jobs FINAL\n"
        "    WHERE ${agent:sqlstring} = '' OR agent_id = ${agent:sqlstring}\n"
        "    GROUP BY job_id, kind\n)\nWHERE $__timeFilter(updated)\n"
        "GROUP BY outcome\nORDER BY outcome",
        ("outcome", "jobs"),
        options={"x_field": "outcome"},
    ),
)

CONSUMER_LAG = (
    "Consumer lag",
    "Messages each consumer group has yet to read, per topic (the workers' Prometheus "
    "metric atlas_consumer_lag, summed over partitions): lag is not stored in ClickHouse.",
    "sum by (group, topic) (atlas_consumer_lag)",
)


class ClickHouseDataquery(cogvariants.Dataquery):
    """A query of grafana-clickhouse-datasource as its panels store it (the SDK ships builders
    for Grafana's own datasources only)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def to_json(self) -> dict[str, Any]:
        return self.fields


class ClickHouseQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    """A raw SQL query (the SQL editor, not the query builder). A time-series query has its
    string columns turned into series labels by the plugin (long to wide)."""

    def __init__(self, sql: str, time_series: bool, ref_id: str = "A") -> None:
        self.sql, self.time_series, self.ref_id = sql, time_series, ref_id

    def build(self) -> ClickHouseDataquery:
        return ClickHouseDataquery(
            {
                "refId": self.ref_id,
                "datasource": CLICKHOUSE.to_json(),
                "editorType": "sql",
                "queryType": "timeSeries" if self.time_series else "table",
                "format": 0 if self.time_series else 1,  # the plugin's time series / table
                "rawSql": self.sql,
            }
        )


VISUALS = {
    "timeseries": timeseries.Panel,
    "table": table.Panel,
    "bargauge": bargauge.Panel,
    "barchart": barchart.Panel,
}
WIDTH, HEIGHT = 12, 8  # two panels a row


def sql_panel(spec: SqlPanel, at: GridPos) -> cogbuilder.Builder[Any]:
    panel = (
        VISUALS[spec.visual]()
        .title(spec.title)
        .description(spec.description)
        .datasource(CLICKHOUSE)
        .with_target(ClickHouseQuery(spec.sql, spec.time_series))
        .grid_pos(at)
    )
    if spec.unit:
        panel.unit(spec.unit)
    if spec.limits:
        panel.min(spec.limits[0]).max(spec.limits[1])
    if spec.green_from is not None:
        steps = [Threshold(None, "red"), Threshold(spec.green_from, "green")]
        panel.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    if "x_field" in spec.options:
        panel.x_field(spec.options["x_field"])
    return panel


def lag_panel(at: GridPos) -> cogbuilder.Builder[Any]:
    title, description, expr = CONSUMER_LAG
    query = (
        prometheus.Dataquery()
        .ref_id("A")
        .datasource(PROMETHEUS)
        .expr(expr)
        .legend_format("{{group}} {{topic}}")
    )
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .with_target(query)
        .grid_pos(at)
    )


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    board = (
        dashboard.Dashboard("atlas-stream")
        .uid("atlas-stream")
        .description("Rewards, costs, judges, dead letters, lag and learning jobs of atlas-stream")
        .tags(["atlas-stream"])
        .timezone("utc")
        .time("now-24h", "now")
        .refresh("1m")
        .with_variable(
            dashboard.QueryVariable("agent")
            .label("Agent")
            .datasource(CLICKHOUSE)
            .query(AGENTS_SQL)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .all_value("''")
            .allow_custom_value(False)
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
        .with_variable(
            dashboard.CustomVariable("threshold")
            .label("Judge/human threshold")
            .description("Score from which a verdict counts as positive (Judges vs humans)")
            .values(",".join(THRESHOLDS))
            .current(VariableOption(selected=True, text=str(DEFAULT_THRESHOLD), value="0.5"))
        )
    )
    places = [GridPos(h=HEIGHT, w=WIDTH, x=WIDTH * (i % 2), y=HEIGHT * (i // 2)) for i in range(99)]
    for spec, at in zip(PANELS, places, strict=False):
        board.with_panel(sql_panel(spec, at))
    board.with_panel(lag_panel(places[len(PANELS)]))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    """The committed file's text."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(PANELS) + 1} panels)")


if __name__ == "__main__":
    main()
