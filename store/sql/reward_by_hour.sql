-- Reward mean/p10/p50/p90 by agent, prompt version (student, teacher) and hour.
-- Parameters: {since:DateTime64(3)}, {agent:String} ('' = all agents).
SELECT agent_id, prompt_versions['student'] AS student_version,
       prompt_versions['teacher'] AS teacher_version, toStartOfHour(created_at) AS hour,
       count() AS traces, avg(reward) AS mean, quantile(0.1)(reward) AS p10,
       quantile(0.5)(reward) AS p50, quantile(0.9)(reward) AS p90
FROM latest_traces
WHERE created_at >= {since:DateTime64(3)} AND ({agent:String} = '' OR agent_id = {agent:String})
GROUP BY agent_id, student_version, teacher_version, hour
ORDER BY agent_id, hour, student_version, teacher_version
