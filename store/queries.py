"""Read queries over the store, as parameterised SQL a dashboard can reuse verbatim."""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.client import Client

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
