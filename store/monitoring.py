"""Monitoring queries: is each agent improving, degrading, costing fewer tokens?

Every query is parameterised SQL over ``latest_traces`` (one row per trace, newest revision)
with ``{since:DateTime64(3)}`` and ``{agent:String}`` ('' = all agents), so a Grafana panel
can use the text as it is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from store.queries import rows_as_dicts

AGENT_FILTER = (
    "created_at >= {since:DateTime64(3)} AND ({agent:String} = '' OR agent_id = {agent:String})"
)

REWARD_BY_HOUR = f"""
SELECT agent_id, prompt_versions['student'] AS student_version,
       prompt_versions['teacher'] AS teacher_version, toStartOfHour(created_at) AS hour,
       count() AS traces, avg(reward) AS mean, quantile(0.1)(reward) AS p10,
       quantile(0.5)(reward) AS p50, quantile(0.9)(reward) AS p90
FROM latest_traces WHERE {AGENT_FILTER}
GROUP BY agent_id, student_version, teacher_version, hour
ORDER BY agent_id, hour, student_version, teacher_version
"""

AGENT_SUMMARY = f"""
SELECT agent_id,
       count() AS traces,
       avg(reward) AS mean_reward,
       countIf(mode != 'auto' AND baseline_reward IS NOT NULL) AS taught,
       if(taught = 0, NULL,
          countIf(mode != 'auto' AND baseline_reward IS NOT NULL AND reward >= baseline_reward)
          / taught) AS non_degradation,
       avg(prompt_tokens + completion_tokens) AS tokens_per_task,
       avgIf(prompt_tokens + completion_tokens, mode = 'paired') AS paired_tokens_per_task,
       countIf(escalated) / count() AS escalation_rate,
       countIf(human_score IS NOT NULL) AS with_feedback,
       groupArray(DISTINCT mode) AS modes
FROM latest_traces WHERE {AGENT_FILTER}
GROUP BY agent_id ORDER BY agent_id
"""

TOKENS_BY_MODE = f"""
SELECT agent_id, mode, count() AS traces, avg(reward) AS mean_reward,
       avg(prompt_tokens + completion_tokens) AS tokens_per_task
FROM latest_traces WHERE {AGENT_FILTER}
GROUP BY agent_id, mode ORDER BY agent_id, mode
"""

JUDGE_AGREEMENT = """
SELECT agent_id, count() AS traces,
       countIf(max_score - min_score <= 0.5) / count() AS agreement,
       avg(judges) AS judges_per_trace
FROM (
    SELECT agent_id, trace_id, max(score) AS max_score, min(score) AS min_score,
           count() AS judges
    FROM judge_scores FINAL
    WHERE score IS NOT NULL AND created_at >= {since:DateTime64(3)}
      AND ({agent:String} = '' OR agent_id = {agent:String})
      AND (trace_id, revision) IN (SELECT trace_id, revision FROM latest_traces)
    GROUP BY agent_id, trace_id
    HAVING judges >= 2
)
GROUP BY agent_id ORDER BY agent_id
"""

DEAD_LETTERS = """
SELECT source_topic, processor, count() AS messages, any(reason) AS example_reason
FROM dead_letters FINAL WHERE failed_at >= {since:DateTime64(3)}
GROUP BY source_topic, processor ORDER BY messages DESC
"""


def monitor(client: Client, since: datetime, agent: str = "") -> dict[str, list[dict[str, Any]]]:
    params = {"since": since, "agent": agent}
    return {
        "summary": rows_as_dicts(client, AGENT_SUMMARY, params),
        "reward_by_hour": rows_as_dicts(client, REWARD_BY_HOUR, params),
        "tokens_by_mode": rows_as_dicts(client, TOKENS_BY_MODE, params),
        "judge_agreement": rows_as_dicts(client, JUDGE_AGREEMENT, params),
        "dead_letters": rows_as_dicts(client, DEAD_LETTERS, {"since": since}),
    }
