-- Per agent: traces, mean reward, non-degradation (share of taught answers, paired or coach,
-- whose reward is at least their baseline's), tokens per task, escalation rate, feedback.
-- Parameters: {since:DateTime64(3)}, {agent:String} ('' = all agents).
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
FROM latest_traces
WHERE created_at >= {since:DateTime64(3)} AND ({agent:String} = '' OR agent_id = {agent:String})
GROUP BY agent_id
ORDER BY agent_id
