"""The alert processor as a stream: per-agent alert state in a changelog-backed table, alert
events to the compacted atlas.alerts.v1 (key ``agent_id/kind``).

Wired like the retrain policy and the memory (``streams/policy_stream.py``,
``streams/memory_stream.py``): the reward stream sends, in the same transaction as each scored
trace, a :class:`~streams.alerts.TraceSeen` (reward, judges' score, human signal) keyed by agent
to an internal topic, and after each batch a :class:`~streams.alerts.DeadLetterTally` under key
``*``; this handler reads that topic, co-partitioned with its table, so one worker owns an
agent's alerts and sees its traces in order. An alert event is committed with the state that
made it, so the topic shows each episode's ``firing`` once and its ``resolved`` once.

Optional side effects of an alert, outside the transaction: a POST to the webhook (queued,
never blocking; ``streams/alert_webhook.py``) and, for a firing reward_drop with
``retrain_on_reward_drop``, a RetrainTrigger (inside the transaction, on atlas.triggers.v1).

An observation that cannot be read is dead-lettered here, and the stream goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import timedelta

from confluent_kafka import Message

from schemas.alerts import Alert
from schemas.codec import AvroCodec
from schemas.models import RetrainTrigger
from schemas.topics import ALERT_OBSERVATIONS, ALERTS, TRIGGERS
from streams.alert_webhook import WebhookNotifier
from streams.alerts import AlertDetector, AlertState, observation_of
from streams.engine import Batch, Handler, Table
from streams.handlers import BatchStates, each_or_dead_letter
from streams.retrain_policy import RetrainPolicyConfig

log = logging.getLogger(__name__)
PROCESSOR_NAME = "alerts"
ALERTS_CHANGELOG = "atlas-rewards-alerts-changelog"


def retrain_trigger(alert: Alert, policy: RetrainPolicyConfig) -> RetrainTrigger:
    """The trigger a firing reward_drop sends, with the retrain policy's kind and window."""
    return RetrainTrigger(
        kind=policy.kind,
        agent_id=alert.agent_id,
        reason=f"alert {alert.alert_id}: {alert.message}",
        requested_by="alerts",
        window_start=alert.fired_at - timedelta(hours=policy.data_window_hours),
        window_end=alert.fired_at,
    )


def alerts_stream(
    detector: AlertDetector,
    codec: AvroCodec,
    notifier: WebhookNotifier | None = None,
    retrain: RetrainPolicyConfig | None = None,
) -> tuple[Table, Handler]:
    """The alert processor's table and the handler of its observations. With ``retrain``
    (and ``retrain_on_reward_drop`` in the detector's config), a firing reward_drop also
    sends a RetrainTrigger."""
    states = Table(ALERTS_CHANGELOG, (ALERT_OBSERVATIONS,))
    trigger_on_drop = retrain is not None and detector.config.retrain_on_reward_drop

    def alert_sends(alerts: list[Alert]) -> list[tuple[str, bytes, bytes]]:
        sends = []
        for alert in alerts:
            sends.append((ALERTS, alert.key.encode(), codec.encode(alert)))
            if (
                retrain
                and trigger_on_drop
                and (alert.kind, alert.state) == ("reward_drop", "firing")
            ):
                trigger = retrain_trigger(alert, retrain)
                sends.append((TRIGGERS, alert.agent_id.encode(), codec.encode(trigger)))
        return sends

    def load(stored: bytes | None) -> AlertState:
        return AlertState.model_validate_json(stored) if stored else AlertState()

    def observe_one(
        pending: BatchStates[AlertState],
        queued: list[Alert],
        message: Message,
        batch: Batch,
    ) -> None:
        """One observation against its key's state as this batch left it (``pending``);
        everything that can fail (reading, encoding) happens before anything is sent."""
        key, partition = message.key() or b"", message.partition()
        seen = observation_of(key, message.value() or b"")
        state = pending.get(partition, key)
        before = state.snapshot()
        try:
            state, alerts, _ = detector.observe(state, seen)
            sends = alert_sends(alerts)
        except Exception:
            pending.set(partition, key, before)  # never half a change (observe never raises)
            raise
        pending.set(partition, key, state)
        for topic, output_key, value in sends:
            batch.send(topic, output_key, value)
        for alert in alerts:
            log.warning(
                "alert %s %s/%s: %s", alert.state, alert.agent_id, alert.kind, alert.message
            )
        queued.extend(alerts)

    def observe(messages: Sequence[Message], batch: Batch) -> None:
        """Each observation against its key's state; each state written once per batch."""
        pending = BatchStates(states, load, lambda state: state.model_dump_json().encode())
        queued: list[Alert] = []
        one = functools.partial(observe_one, pending, queued)
        each_or_dead_letter(one, codec, PROCESSOR_NAME)(messages, batch)
        pending.write(batch)
        if notifier is not None:
            for alert in queued:
                notifier.notify(alert)

    return states, observe
