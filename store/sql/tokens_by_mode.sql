-- Traces, mean reward and tokens per task by agent and mode (auto, paired, coach).
-- Parameters: {since:DateTime64(3)}, {agent:String} ('' = all agents).
SELECT agent_id, mode, count() AS traces, avg(reward) AS mean_reward,
       avg(prompt_tokens + completion_tokens) AS tokens_per_task
FROM latest_traces
WHERE created_at >= {since:DateTime64(3)} AND ({agent:String} = '' OR agent_id = {agent:String})
GROUP BY agent_id, mode
ORDER BY agent_id, mode
