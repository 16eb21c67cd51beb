-- Judge agreement per agent: share of traces (latest revision, two or more judge scores)
-- whose scores lie within 0.5 of each other, and judges per trace.
-- Parameters: {since:DateTime64(3)}, {agent:String} ('' = all agents).
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
GROUP BY agent_id
ORDER BY agent_id
