"""Monitoring queries: is each agent improving, degrading, costing fewer tokens?

The queries are plain SQL files in ``store/sql/`` (one per result, named after it), over
``latest_traces`` (one row per trace, newest revision) and the judge and dead-letter tables,
with ClickHouse query parameters ``{since:DateTime64(3)}``, ``{agent:String}`` ('' = all
agents) and, for the judges-vs-humans figures, ``{threshold:Float64}``: a person or a Grafana
panel can run a file as it is.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from importlib.resources import files
from typing import Any

from clickhouse_connect.driver.client import Client

from store.queries import rows_as_dicts

# What `monitor` returns, in this order; each name is a file ``store/sql/<name>.sql``.
MONITOR_QUERIES = (
    "summary",
    "reward_by_hour",
    "tokens_by_mode",
    "judge_agreement",
    "human_agreement",
    "dead_letters",
)
# The other files of ``store/sql/``: the data a job reads (not part of `monitor`).
DATASET_QUERIES = ("labelled_traces",)
# The score from which a judge's (or a person's) verdict counts as positive in the confusion
# and kappa of `human_agreement`, unless the caller says otherwise.
DEFAULT_THRESHOLD = 0.5

# A ClickHouse query parameter, {name:Type}; group 1 is the name.
PARAMETER = re.compile(r"\{(\w+):[^}]+\}")


@cache
def load_sql(name: str) -> str:
    """The text of ``store/sql/<name>.sql``, shipped with the package."""
    return files("store").joinpath("sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def sql_parameters(sql: str) -> set[str]:
    """The names of the query parameters (``{name:Type}``) that ``sql`` uses."""
    return set(PARAMETER.findall(sql))


def monitor(
    client: Client, since: datetime, agent: str = "", threshold: float = DEFAULT_THRESHOLD
) -> dict[str, list[dict[str, Any]]]:
    """Every query of ``MONITOR_QUERIES`` over traces created since ``since`` (of ``agent``
    only, unless ''), as rows of column -> value, keyed by query name in that order. Each
    query gets only the parameters its file uses. ValueError if ``threshold`` is not in
    [0, 1] (scores are)."""
    if not 0.0 <= threshold <= 1.0:  # also refuses NaN
        raise ValueError(f"threshold must be between 0 and 1, not {threshold}")
    values = {"since": since, "agent": agent, "threshold": threshold}
    results = {}
    for name in MONITOR_QUERIES:
        sql = load_sql(name)
        params = {key: values[key] for key in sql_parameters(sql)}
        results[name] = rows_as_dicts(client, sql, params)
    return results


def labelled_traces(
    client: Client, agent: str, since: Any, until: Any, limit: int = 100_000
) -> list[tuple[str, dict[str, float], float]]:
    """(trace_id, judge -> score, human score) of the agent's newest ``limit`` traces with
    finite human and judge scores in [since, until) (``store/sql/labelled_traces.sql``)."""
    values = {"agent": agent, "since": since, "until": until, "limit": limit}
    rows = rows_as_dicts(client, load_sql("labelled_traces"), values)
    return [
        (r["trace_id"], dict(zip(r["judges"], r["scores"], strict=True)), float(r["human"]))
        for r in rows
    ]
