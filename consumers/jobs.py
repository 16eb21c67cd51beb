"""Job reports on ``atlas.jobs.v1``, written transactionally.

A job's terminal report and what it publishes (prompt versions, checkpoint events) go out in
one Kafka transaction: readers (read_committed, the default of our consumers) see both or
neither, so a worker killed while publishing leaves no half-published result. The
transactional id is the worker's, so a restarted worker fences its dead predecessor.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from runtime.follow import reached
from runtime.metrics import WorkerMetrics, job_entered
from schemas.codec import AvroCodec, DecodeError
from schemas.models import Event, JobKind, JobState, JobStatus, RetrainTrigger, under
from schemas.secrets import private_dir, scrub
from schemas.signing import Signer
from schemas.topics import CHECKPOINTS, JOBS, PROMPTS, key_of, topic_of

SIGNED_TOPICS = frozenset({PROMPTS, CHECKPOINTS})
TERMINAL: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "REJECTED"})


class JobAborted(RuntimeError):
    """The job was ended from outside (worker shutting down); it must not report again."""


def job_id_for(trigger: RetrainTrigger) -> str:
    """One trigger, one job: a redelivered trigger maps to the job it already started."""
    return f"{trigger.kind}-{hashlib.sha1(trigger.trigger_id.encode()).hexdigest()[:12]}"


def fresh_run_dir(run_root: Path, job_id: str) -> Path:
    """An empty folder for one job's files, private to this worker (0700 under a 0700 root):
    nothing left from an earlier run, nor planted by anyone else, is ever loaded."""
    private_dir(run_root)
    run_dir = under(run_root, job_id)
    if run_dir.is_symlink() or run_dir.is_file():
        run_dir.unlink()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(mode=0o700)
    return run_dir


class TransactionalProducer:
    """Events in transactions; with a ``signer``, every prompt version and checkpoint card
    carries the learner's signature."""

    def __init__(
        self,
        kafka_config: dict[str, str],
        transactional_id: str,
        codec: AvroCodec,
        signer: Signer | None = None,
    ):
        self.codec = codec
        self.signer = signer
        self._producer = Producer(
            {
                **kafka_config,
                "transactional.id": transactional_id,
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self._producer.init_transactions(30)

    def send(self, events: Sequence[Event], tombstones: Sequence[tuple[str, bytes]] = ()) -> None:
        """All of ``events`` and ``tombstones`` ((topic, key): a null value, which removes the
        key from a compacted topic) durably, atomically, or an exception and none of them."""
        self._producer.begin_transaction()
        try:
            messages = [(topic_of(e), key_of(e), self.codec.encode(e)) for e in events]
            for topic, key, value in [*messages, *((t, k, None) for t, k in tombstones)]:
                headers = None
                if self.signer is not None and topic in SIGNED_TOPICS:
                    headers = [self.signer.header(topic, key, value)]
                self._producer.produce(topic, key=key, value=value, headers=headers)
            self._producer.commit_transaction(30)
        except BaseException:  # an encoding error as much as a broker error: none of them
            self._producer.abort_transaction(30)
            raise


class JobReporter:
    """Reports one job's states in order (``seq``); progress at most every ``every_s``."""

    def __init__(
        self,
        producer: TransactionalProducer,
        trigger: RetrainTrigger,
        worker: str,
        seq: int = 0,
        every_s: float = 2.0,
    ):
        self.producer = producer
        self.trigger = trigger
        self.job_id = job_id_for(trigger)
        self.worker = worker
        self.seq = seq
        self.every_s = every_s
        self.state: JobState | None = None
        self._last_progress = 0.0
        self._lock = threading.Lock()

    def report(
        self,
        state: JobState,
        message: str = "",
        progress: float | None = None,
        metrics: dict[str, float] | None = None,
        result_version: int | None = None,
        publish: Sequence[Event] = (),
    ) -> JobStatus:
        with self._lock:
            if self.state in TERMINAL:
                raise JobAborted(f"job {self.job_id} already ended {self.state}")
            self.seq += 1
            status = JobStatus(
                job_id=self.job_id,
                trigger_id=self.trigger.trigger_id,
                kind=self.trigger.kind,
                agent_id=self.trigger.agent_id,
                state=state,
                seq=self.seq,
                progress=progress,
                message=scrub(message),  # a job's error may quote a URL or a reply
                metrics=metrics or {},
                result_version=result_version,
                worker=self.worker,
            )
            self.producer.send([*publish, status])
            job_entered(status.kind, state, self.state)
            WorkerMetrics(status.kind).delivered(topic_of(e) for e in [*publish, status])
            self.state = state
            return status

    def progress(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last_progress >= self.every_s:
            self._last_progress = now
            self.report("RUNNING", message, progress=round(fraction, 4))


def read_job_reports(
    kafka_config: dict[str, str], codec: AvroCodec, timeout: float = 30.0
) -> list[JobStatus]:
    """Every committed report on ``atlas.jobs.v1``, from the start, in partition order."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "atlas-jobs-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = consumer.list_topics(JOBS, timeout=timeout).topics[JOBS].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(JOBS, p), timeout=timeout)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(JOBS, p, OFFSET_BEGINNING) for p in ends])
        reports: list[JobStatus] = []
        deadline = time.monotonic() + timeout
        while not reached(consumer, JOBS, ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {JOBS} within {timeout}s")
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is None:
                    with contextlib.suppress(DecodeError):
                        reports.append(codec.decode(message.value() or b"", JobStatus))
        return reports
    finally:
        consumer.close()


def read_job_states(
    kafka_config: dict[str, str], codec: AvroCodec, timeout: float = 30.0
) -> dict[str, JobStatus]:
    """The last committed report of every job."""
    latest: dict[str, JobStatus] = {}
    for status in read_job_reports(kafka_config, codec, timeout):
        known = latest.get(status.job_id)
        if known is None or status.seq >= known.seq:
            latest[status.job_id] = status
    return latest


def orphaned_jobs(states: dict[str, JobStatus], kind: JobKind, worker: str) -> list[JobStatus]:
    """Jobs this worker left unfinished when it last died."""
    return [
        s
        for s in states.values()
        if s.kind == kind and s.worker == worker and s.state not in TERMINAL
    ]
