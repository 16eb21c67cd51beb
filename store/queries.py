"""Read queries over the store, as parameterised SQL a dashboard can reuse verbatim."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client
from pydantic import BaseModel

from schemas.alerts import Alert
from schemas.models import (
    CheckpointEvent,
    InteractionEvent,
    JobStatus,
    PromptRef,
    PromptVersion,
    RetrainTrigger,
    Step,
    Usage,
)
from schemas.rollouts import RolloutStatus

REWARD_BY_AGENT = """
SELECT
    agent_id,
    count() AS traces,
    avg(reward) AS mean_reward,
    quantile(0.1)(reward) AS p10_reward,
    quantile(0.5)(reward) AS p50_reward,
    quantile(0.9)(reward) AS p90_reward,
    sum(prompt_tokens + completion_tokens) AS tokens,
    countIf(escalated) / count() AS escalation_rate
FROM latest_traces
WHERE created_at >= {since:DateTime64(3)}
GROUP BY agent_id
ORDER BY agent_id
"""

TRACE_REVISIONS = """
SELECT trace_id, max(revision) AS latest_revision, count() AS rows
FROM scored_traces FINAL
WHERE agent_id = {agent_id:String}
GROUP BY trace_id
"""


def rows_as_dicts(client: Client, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def reward_by_agent(client: Client, since: Any) -> list[dict[str, Any]]:
    return rows_as_dicts(client, REWARD_BY_AGENT, {"since": since})


RECENT_REWARD_BY_MODE = """
SELECT mode, avg(reward) AS mean_reward, count() AS traces
FROM latest_traces
WHERE agent_id = {agent_id:String} AND created_at >= now64(3) - INTERVAL {hours:UInt32} HOUR
GROUP BY mode
"""


class StoreRecentRewards:
    """The runtime's ``RecentRewards`` source, answered from the agent's scored traces."""

    def __init__(self, client: Client, hours: int = 24):
        self.client = client
        self.hours = hours

    def recent_by_mode(self, agent_id: str) -> dict[str, tuple[float, int]]:
        rows = self.client.query(
            RECENT_REWARD_BY_MODE, parameters={"agent_id": agent_id, "hours": self.hours}
        ).result_rows
        return {mode: (float(mean), int(count)) for mode, mean, count in rows}


STORED_INTERACTIONS = """
SELECT event_id, trace_id, agent_id, created_at, task_id, task_family, task_input, reference,
       mode, prompt_versions, models, steps_json, final_answer, baseline_answer,
       prompt_tokens, completion_tokens, latency_ms, metadata, revision
FROM latest_traces
WHERE created_at >= {since:DateTime64(3)} AND ({agent:String} = '' OR agent_id = {agent:String})
ORDER BY created_at
"""


def stored_interactions(
    client: Client, since: Any, agent: str = ""
) -> list[tuple[InteractionEvent, int]]:
    """The stored traces as the interactions that produced them, with their latest revision."""
    out = []
    for row in rows_as_dicts(client, STORED_INTERACTIONS, {"since": since, "agent": agent}):
        event = InteractionEvent(
            event_id=row["event_id"] or f"stored-{row['trace_id']}",
            trace_id=row["trace_id"],
            agent_id=row["agent_id"],
            created_at=row["created_at"],
            task_id=row["task_id"],
            task_family=row["task_family"] or None,
            task_input=row["task_input"],
            reference=row["reference"],
            mode=row["mode"],
            prompt_versions=[
                PromptRef(role=r, version=v) for r, v in row["prompt_versions"].items()
            ],
            models=row["models"],
            steps=[Step(**step) for step in json.loads(row["steps_json"])],
            final_answer=row["final_answer"],
            baseline_answer=row["baseline_answer"],
            usage=Usage(
                prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"]
            ),
            latency_ms=row["latency_ms"],
            metadata=row["metadata"],
        )
        out.append((event, int(row["revision"])))
    return out


@dataclass(frozen=True)
class TrainingTrace:
    """A stored trace as learning material: what was asked, what came out, how it scored,
    and the user's edit (their ideal output) when there is one."""

    trace_id: str
    task_id: str
    task_family: str | None
    task_input: str
    reference: str | None
    final_answer: str
    reward: float
    human_score: float | None
    edited_text: str | None
    rationale: str


TRAINING_TRACES = """
SELECT t.trace_id, t.task_id, t.task_family, t.task_input, t.reference, t.final_answer,
       t.reward, t.human_score, t.rationale, e.edit AS edited_text
FROM latest_traces AS t
LEFT JOIN (
    SELECT trace_id, argMax(edited_text, created_at) AS edit
    FROM feedback FINAL
    WHERE agent_id = {agent:String} AND kind = 'edit' AND edited_text IS NOT NULL
    GROUP BY trace_id
) AS e ON e.trace_id = t.trace_id
WHERE t.agent_id = {agent:String}
  AND t.created_at >= {since:DateTime64(3)} AND t.created_at < {until:DateTime64(3)}
ORDER BY (e.edit IS NOT NULL) DESC, (t.reference IS NOT NULL) DESC, t.created_at DESC
LIMIT {limit:UInt32}
"""


def training_traces(
    client: Client, agent: str, since: Any, until: Any, limit: int = 5000
) -> list[TrainingTrace]:
    """The agent's latest-revision traces in [since, until): edited ones first, then those
    with a reference, newest first."""
    rows = rows_as_dicts(
        client, TRAINING_TRACES, {"agent": agent, "since": since, "until": until, "limit": limit}
    )
    return [
        TrainingTrace(
            trace_id=r["trace_id"],
            task_id=r["task_id"],
            task_family=r["task_family"] or None,
            task_input=r["task_input"],
            reference=r["reference"],
            final_answer=r["final_answer"],
            reward=float(r["reward"]),
            human_score=r["human_score"],
            edited_text=r["edited_text"] or None,
            rationale=r["rationale"],
        )
        for r in rows
    ]


def select_fields(model: type[BaseModel], table: str) -> str:
    """``SELECT`` of every field of ``model`` from ``table``: a version table has one column
    per field of its event, by the same name, so a row is the event's keyword arguments."""
    return f"SELECT {', '.join(model.model_fields)}\nFROM {table} FINAL"


# A version table, by the event it stores: one column per field, so a row is its arguments.
VERSION_TABLES: dict[type[BaseModel], str] = {
    PromptVersion: "prompt_versions",
    CheckpointEvent: "checkpoints",
}
PROMPT_SELECT = select_fields(PromptVersion, VERSION_TABLES[PromptVersion])
CHECKPOINT_SELECT = select_fields(CheckpointEvent, VERSION_TABLES[CheckpointEvent])
HISTORY_WHERE = """
WHERE agent_id = {agent:String} AND ({role:String} = '' OR role = {role:String})
ORDER BY role, version
"""
VERSION_WHERE = """
WHERE agent_id = {agent:String} AND role = {role:String} AND version = {version:Int32}
LIMIT 1
"""
INT32 = range(-(2**31), 2**31)  # the type of the version columns: nothing outside is stored
Version = TypeVar("Version", PromptVersion, CheckpointEvent)


def version_history(client: Client, model: type[Version], agent: str, role: str) -> list[Version]:
    """Every stored version of the agent's ``role`` (every role if empty), by role and number."""
    sql = select_fields(model, VERSION_TABLES[model]) + HISTORY_WHERE
    return [model(**row) for row in rows_as_dicts(client, sql, {"agent": agent, "role": role})]


def stored_version(
    client: Client, model: type[Version], agent: str, role: str, version: int
) -> Version | None:
    """Stored version ``version`` of the agent's ``role``; None if the store has none."""
    if version not in INT32:
        return None
    sql = select_fields(model, VERSION_TABLES[model]) + VERSION_WHERE
    rows = rows_as_dicts(client, sql, {"agent": agent, "role": role, "version": version})
    return model(**rows[0]) if rows else None


def prompt_history(client: Client, agent: str, role: str = "") -> list[PromptVersion]:
    return version_history(client, PromptVersion, agent, role)


def prompt_version(client: Client, agent: str, role: str, version: int) -> PromptVersion | None:
    return stored_version(client, PromptVersion, agent, role, version)


JOB_REPORTS = """
SELECT job_id, trigger_id, kind, agent_id, state, seq, updated_at, progress, message, metrics,
       result_version, worker
FROM jobs FINAL
WHERE ({job:String} = '' OR job_id = {job:String})
  AND ({agent:String} = '' OR agent_id = {agent:String})
ORDER BY job_id, seq
"""


def job_reports(client: Client, job_id: str = "", agent: str = "") -> list[JobStatus]:
    """Every stored report, per job in order of ``seq``."""
    return [
        JobStatus(**row)
        for row in rows_as_dicts(client, JOB_REPORTS, {"job": job_id, "agent": agent})
    ]


def latest_job_states(client: Client, agent: str = "") -> list[JobStatus]:
    """The last report of each job, newest job first."""
    latest: dict[str, JobStatus] = {}
    for report in job_reports(client, agent=agent):
        latest[report.job_id] = report
    return sorted(latest.values(), key=lambda r: r.updated_at, reverse=True)


def stored_trigger(client: Client, trigger_id: str) -> RetrainTrigger | None:
    rows = rows_as_dicts(
        client,
        "SELECT * FROM triggers FINAL WHERE trigger_id = {t:String} LIMIT 1",
        {"t": trigger_id},
    )
    return RetrainTrigger(**rows[0]) if rows else None


def checkpoint_history(client: Client, agent: str, role: str = "") -> list[CheckpointEvent]:
    return version_history(client, CheckpointEvent, agent, role)


def checkpoint_version(
    client: Client, agent: str, role: str, version: int
) -> CheckpointEvent | None:
    return stored_version(client, CheckpointEvent, agent, role, version)


ROLLOUT_WHERE = """
WHERE agent_id = {agent:String} AND ({role:String} = '' OR role = {role:String})
"""


def rollout_statuses(
    client: Client, agent: str, role: str = "", latest: bool = True
) -> list[RolloutStatus]:
    """The agent's rollouts, newest first: each one's latest status (``latest``: its decision
    once decided, even when a running report carries the same time, as the statuses of one
    batch of traces can), else every status stored (running reports, then the decision)."""
    statuses = select_fields(RolloutStatus, "rollout_statuses") + ROLLOUT_WHERE
    if latest:  # a decision is final: it comes first among its rollout's statuses
        sql = (
            f"SELECT * FROM ({statuses} ORDER BY state = 'running', updated_at DESC"
            " LIMIT 1 BY rollout_id) ORDER BY updated_at DESC"
        )
    else:
        sql = f"{statuses} ORDER BY updated_at DESC, state = 'running'"
    rows = rows_as_dicts(client, sql, {"agent": agent, "role": role})
    return [RolloutStatus(**row) for row in rows]


# Each agent/kind's latest alert event; those still firing are the current alerts. The same
# as the compacted atlas.alerts.v1 holds (its latest event per key).
CURRENT_ALERTS = """
SELECT alert_id, agent_id, kind, state, fired_at, updated_at, baseline_median, mad,
       recent_value, threshold, count, message
FROM alerts FINAL
WHERE ({agent:String} = '' OR agent_id = {agent:String})
ORDER BY updated_at DESC, alert_id
LIMIT 1 BY agent_id, kind
"""


def current_alerts(client: Client, agent: str = "", firing_only: bool = True) -> list[Alert]:
    """Each agent/kind's alert as it stands now (only those firing, unless ``firing_only`` is
    False), the most recently changed first; ``agent`` '' for every agent."""
    alerts = [
        Alert(**{**row, "count": int(row["count"])})
        for row in rows_as_dicts(client, CURRENT_ALERTS, {"agent": agent})
    ]
    return [a for a in alerts if a.state == "firing" or not firing_only]
