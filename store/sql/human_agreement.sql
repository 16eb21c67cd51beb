-- Judges vs humans, per agent, day (of the trace) and judge, on traces whose latest revision
-- carries a human score: n, Spearman correlation, MAE, and the confusion and Cohen's kappa at
-- {threshold:Float64} (positive: score >= threshold, for the machine and the human alike).
-- Feedback that came after the trace was scored made a later revision, so it counts here.
-- What is compared with what:
-- * human: human_score of the trace's latest revision (the signal of all its feedback).
-- * each judge: its score at that same revision. A feedback revision re-sends the judges'
--   scores the trace already had (streams/processor.py), so every revision carries them; a
--   judge that failed (NULL) or gave a non-finite score is left out of its pairs.
-- * judge = 'final': the final reward without the human in it, i.e. the reward of the trace's
--   latest revision whose human_score is NULL (the reward before any feedback). The latest
--   revision's reward mixes the human score in (rim/reward.py, human_weight), so comparing it
--   with the human would be circular. A trace whose feedback was merged before it was first
--   scored has no such revision: it counts for the judges but not for 'final'.
-- spearman: the Pearson correlation of average ranks (tied scores share their mean rank).
--   ClickHouse's rankCorr is not used: it assumes no ties, and human scores are mostly ties
--   (approve 1, reject 0). NULL when n < 2 or either side is constant.
-- kappa: (p_o - p_e) / (1 - p_e) with p_o = (tp + tn) / n and
--   p_e = ((tp + fp)(tp + fn) + (fn + tn)(fp + tn)) / n^2, computed as
--   (n (tp + tn) - E) / (n^2 - E) with E = n^2 p_e in integers, so that it is exact; NULL when
--   p_e = 1 (every score, machine and human, on the same side of the threshold).
-- Parameters: {since:DateTime64(3)}, {agent:String} ('' = all agents), {threshold:Float64}.
WITH labelled AS (
    SELECT trace_id, revision, agent_id, toDate(created_at) AS day, human_score AS human
    FROM latest_traces
    WHERE human_score IS NOT NULL AND created_at >= {since:DateTime64(3)}
      AND ({agent:String} = '' OR agent_id = {agent:String})
),
pairs AS (
    SELECT l.agent_id AS agent_id, l.day AS day, toString(j.judge) AS judge,
           assumeNotNull(j.score) AS machine, assumeNotNull(l.human) AS human
    FROM labelled AS l
    INNER JOIN (
        SELECT trace_id, revision, judge, score
        FROM judge_scores FINAL
        WHERE score IS NOT NULL AND isFinite(score) AND created_at >= {since:DateTime64(3)}
          AND ({agent:String} = '' OR agent_id = {agent:String})
    ) AS j ON j.trace_id = l.trace_id AND j.revision = l.revision
    UNION ALL
    SELECT l.agent_id, l.day, 'final', m.reward, assumeNotNull(l.human)
    FROM labelled AS l
    INNER JOIN (
        SELECT trace_id, argMax(reward, revision) AS reward
        FROM scored_traces FINAL
        WHERE human_score IS NULL AND created_at >= {since:DateTime64(3)}
          AND ({agent:String} = '' OR agent_id = {agent:String})
        GROUP BY trace_id
    ) AS m ON m.trace_id = l.trace_id
),
ranked AS (
    -- rank() is the lowest rank of a run of ties; adding half the run's length beyond its
    -- first gives the run's mean rank
    SELECT agent_id, day, judge, machine, human,
           rank() OVER (PARTITION BY agent_id, day, judge ORDER BY machine)
             + (count() OVER (PARTITION BY agent_id, day, judge, machine) - 1) / 2
             AS machine_rank,
           rank() OVER (PARTITION BY agent_id, day, judge ORDER BY human)
             + (count() OVER (PARTITION BY agent_id, day, judge, human) - 1) / 2
             AS human_rank
    FROM pairs
),
counted AS (
    SELECT agent_id, day, judge, toInt64(count()) AS n,
           corr(machine_rank, human_rank) AS rank_corr,
           avg(abs(machine - human)) AS mae,
           toInt64(countIf(machine >= {threshold:Float64} AND human >= {threshold:Float64}))
             AS tp,
           toInt64(countIf(machine >= {threshold:Float64} AND human < {threshold:Float64}))
             AS fp,
           toInt64(countIf(machine < {threshold:Float64} AND human >= {threshold:Float64}))
             AS fn,
           toInt64(countIf(machine < {threshold:Float64} AND human < {threshold:Float64}))
             AS tn
    FROM ranked
    GROUP BY agent_id, day, judge
)
SELECT agent_id, day, judge, n,
       if(isFinite(rank_corr), rank_corr, NULL) AS spearman,
       if(chance = n * n, NULL, (n * (tp + tn) - chance) / (n * n - chance)) AS kappa,
       mae, tp, fp, fn, tn
FROM (
    SELECT *, (tp + fp) * (tp + fn) + (fn + tn) * (fp + tn) AS chance
    FROM counted
)
ORDER BY agent_id, day, judge
