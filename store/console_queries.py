"""The web console's reads: trace search, one trace's closed loop with its judges, feedback and
revisions, and the versions a job published.

Every value a person types reaches ClickHouse only as a query parameter; a search's WHERE
clauses are assembled from the constant fragments of ``TRACE_FILTERS`` and ``REWARD_FILTERS``,
chosen by which filters are set, never from the values themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from schemas.models import CheckpointEvent, PromptVersion, Step
from store.queries import VERSION_TABLES, Version, rows_as_dicts, select_fields

MAX_SEARCH_ROWS = 500


@dataclass(frozen=True)
class TraceSearch:
    """A trace search: every filter that is not None narrows it (all of them must hold)."""

    agent: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    reward_min: float | None = None
    reward_max: float | None = None
    version: int | None = None  # a prompt version, of any role
    limit: int = 100


# Filter name -> its constant fragment of the WHERE clause; the value goes in as the parameter
# of the same name. A trace's agent, time and prompt versions are the same in every revision,
# so those filters apply before the latest revision is picked (and agent and time use the
# table's sort key); the reward is a revision's, so its filters apply after.
TRACE_FILTERS = {
    "agent": "agent_id = {agent:String}",
    "since": "created_at >= {since:DateTime64(3)}",
    "until": "created_at < {until:DateTime64(3)}",
    "version": "has(mapValues(prompt_versions), {version:Int32})",
}
REWARD_FILTERS = {
    "reward_min": "reward >= {reward_min:Float64}",
    "reward_max": "reward <= {reward_max:Float64}",
}
TRACE_SEARCH = """
SELECT trace_id, agent_id, created_at, revision, task_family, mode, prompt_versions, reward,
       human_score, escalated, feedback_count, substring(task_input, 1, 120) AS task
FROM (
    SELECT * FROM scored_traces FINAL
    WHERE {trace_filters}
    ORDER BY trace_id, revision DESC
    LIMIT 1 BY trace_id
)
WHERE {reward_filters}
ORDER BY created_at DESC
LIMIT {{limit:UInt32}}
"""


def search_traces(client: Client, search: TraceSearch) -> list[dict[str, Any]]:
    """The latest revision of each trace that matches ``search``, newest first, at most
    ``search.limit`` (capped at ``MAX_SEARCH_ROWS``)."""
    values: dict[str, Any] = {}
    clauses = []
    for filters in (TRACE_FILTERS, REWARD_FILTERS):
        chosen = [name for name in filters if getattr(search, name) is not None]
        values.update({name: getattr(search, name) for name in chosen})
        clauses.append(" AND ".join(filters[name] for name in chosen) or "1")
    values["limit"] = max(1, min(search.limit, MAX_SEARCH_ROWS))
    sql = TRACE_SEARCH.format(trace_filters=clauses[0], reward_filters=clauses[1])
    return rows_as_dicts(client, sql, values)


TRACE_REVISIONS = """
SELECT revision, agent_id, created_at, scored_at, task_id, task_family, task_input, reference,
       mode, prompt_versions, models, steps_json, final_answer, baseline_answer, reward,
       baseline_reward, human_score, uncertainty, escalated, rationale, feedback_count, errors,
       prompt_tokens, completion_tokens, latency_ms
FROM scored_traces FINAL
WHERE trace_id = {trace:String}
ORDER BY revision
"""
TRACE_JUDGES = """
SELECT revision, judge, score, uncertainty, escalated, samples, error, rationale
FROM judge_scores FINAL
WHERE trace_id = {trace:String}
ORDER BY revision, judge
"""
TRACE_FEEDBACK = """
SELECT event_id, created_at, kind, edited_text, rating, rating_min, rating_max, tool_name,
       tool_success, user_id, comment
FROM feedback FINAL
WHERE trace_id = {trace:String}
ORDER BY created_at, event_id
"""


@dataclass(frozen=True)
class TraceDetail:
    """One trace as the store holds it: every revision (oldest first; the last is what counts
    now), the closed loop's steps of the latest one, each revision's judges and the feedback."""

    trace_id: str
    revisions: list[dict[str, Any]]
    steps: list[Step]
    judges: list[dict[str, Any]]
    feedback: list[dict[str, Any]]

    @property
    def latest(self) -> dict[str, Any]:
        return self.revisions[-1]


def trace_detail(client: Client, trace_id: str) -> TraceDetail | None:
    """The trace ``trace_id``; None if the store has no revision of it."""
    params = {"trace": trace_id}
    revisions = rows_as_dicts(client, TRACE_REVISIONS, params)
    if not revisions:
        return None
    steps = [Step(**step) for step in json.loads(revisions[-1]["steps_json"])]
    return TraceDetail(
        trace_id=trace_id,
        revisions=revisions,
        steps=steps,
        judges=rows_as_dicts(client, TRACE_JUDGES, params),
        feedback=rows_as_dicts(client, TRACE_FEEDBACK, params),
    )


def versions_from_job(client: Client, model: type[Version], job_id: str) -> list[Version]:
    """The prompt versions (or checkpoints) that job ``job_id`` published: its lineage's end."""
    sql = select_fields(model, VERSION_TABLES[model])
    sql += "\nWHERE job_id = {job:String}\nORDER BY agent_id, role, version"
    return [model(**row) for row in rows_as_dicts(client, sql, {"job": job_id})]


def job_outputs(client: Client, job_id: str) -> tuple[list[PromptVersion], list[CheckpointEvent]]:
    """Both kinds of version a job may have published."""
    return (
        versions_from_job(client, PromptVersion, job_id),
        versions_from_job(client, CheckpointEvent, job_id),
    )


AGENT_IDS = """
SELECT DISTINCT agent_id FROM (
    SELECT agent_id FROM scored_traces
    UNION ALL SELECT agent_id FROM prompt_versions
    UNION ALL SELECT agent_id FROM jobs
)
ORDER BY agent_id
"""


def known_agents(client: Client) -> list[str]:
    """Every agent the store has a trace, a prompt version or a job of."""
    return [row[0] for row in client.query(AGENT_IDS).result_rows]
