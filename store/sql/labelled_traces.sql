-- The traces a RIM calibration learns from (`atlas retrain rim`): one agent's traces created in
-- [{since:DateTime64(3)}, {until:DateTime64(3)}) whose latest revision carries a finite human
-- score, each with the finite judge scores of that revision (a feedback revision re-sends the
-- judges' scores, see human_agreement.sql). A trace no judge scored is left out: there is
-- nothing to calibrate on it. The newest {limit:UInt32} traces at most, so a busy agent's long
-- window stays a bounded job. Parameters: {agent:String}, {since:...}, {until:...}, {limit:...}.
SELECT l.trace_id AS trace_id, assumeNotNull(l.human_score) AS human,
       groupArray(toString(j.judge)) AS judges, groupArray(assumeNotNull(j.score)) AS scores
FROM latest_traces AS l
INNER JOIN (
    SELECT trace_id, revision, judge, score
    FROM judge_scores FINAL
    WHERE agent_id = {agent:String} AND score IS NOT NULL AND isFinite(score)
      AND created_at >= {since:DateTime64(3)} AND created_at < {until:DateTime64(3)}
) AS j ON j.trace_id = l.trace_id AND j.revision = l.revision
WHERE l.agent_id = {agent:String} AND l.human_score IS NOT NULL AND isFinite(l.human_score)
  AND l.created_at >= {since:DateTime64(3)} AND l.created_at < {until:DateTime64(3)}
GROUP BY l.trace_id, l.human_score, l.created_at
ORDER BY l.created_at DESC, l.trace_id
LIMIT {limit:UInt32}
