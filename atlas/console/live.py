"""Live job progress for the console: ``atlas.jobs.v1`` followed on a background thread, so a
running job's progress shows as soon as its worker reports it, before the sink stores it.

The store stays the record (every report, lineage); the topic only adds reports it does not
have yet. Without a reachable broker the console serves what the store has.
"""

from __future__ import annotations

import contextlib
import logging

from atlas.settings import Settings
from runtime.follow import TopicFollower
from schemas.codec import DecodeError
from schemas.models import JobStatus
from schemas.topics import JOBS

log = logging.getLogger("atlas.console")


class JobFollower(TopicFollower[JobStatus]):
    """The latest committed report of every job on ``atlas.jobs.v1`` (by ``seq``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._latest: dict[str, JobStatus] = {}

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        with contextlib.suppress(DecodeError):
            status = self.codec.decode(value or b"", JobStatus)
            with self._lock:
                known = self._latest.get(status.job_id)
                if known is None or status.seq >= known.seq:
                    self._latest[status.job_id] = status
            return
        self.skipped += 1

    def latest(self) -> dict[str, JobStatus]:
        with self._lock:
            return dict(self._latest)


def follow_jobs(settings: Settings) -> JobFollower | None:
    """A started follower of the jobs topic, or None (logged) if the broker cannot be read."""
    try:
        follower = JobFollower(settings.kafka_config(), JOBS, JobStatus, settings.codec())
        return follower.start(timeout=30)
    except Exception as exc:  # the broker may be down: the store still answers
        log.warning("console: not following %s live (%s)", JOBS, type(exc).__name__)
        return None


def merged_states(stored: list[JobStatus], live: dict[str, JobStatus]) -> list[JobStatus]:
    """Each job's latest report, from the store or the topic, whichever is further (by seq);
    newest first."""
    latest = {job.job_id: job for job in stored}
    for job_id, status in live.items():
        if job_id not in latest or status.seq > latest[job_id].seq:
            latest[job_id] = status
    return sorted(latest.values(), key=lambda job: job.updated_at, reverse=True)


def merged_reports(stored: list[JobStatus], live: JobStatus | None) -> list[JobStatus]:
    """A job's stored reports, and its live latest report if the store has not got it yet."""
    if live is not None and (not stored or live.seq > stored[-1].seq):
        return [*stored, live]
    return stored
