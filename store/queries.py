"""Read queries over the store, as parameterised SQL a dashboard can reuse verbatim."""

from __future__ import annotations

import json
from typing import Any

from clickhouse_connect.driver.client import Client

from schemas.models import InteractionEvent, PromptRef, Step, Usage

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
