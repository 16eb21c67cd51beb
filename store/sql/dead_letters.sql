-- Dead letters by source topic and processor, with one example reason.
-- Parameters: {since:DateTime64(3)}.
SELECT source_topic, processor, count() AS messages, any(reason) AS example_reason
FROM dead_letters FINAL
WHERE failed_at >= {since:DateTime64(3)}
GROUP BY source_topic, processor
ORDER BY messages DESC
