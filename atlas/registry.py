"""Which workers run on this host: a slot per worker, held by an inter-process file lock.

A worker claims the lowest free slot of its kind (``$ATLAS_HOME/workers/<kind>-<n>.lock``,
held with ``fcntl.flock`` for the life of the process, released by the kernel even on
``kill -9``). Its id is ``<host>-<kind>-<n>`` unless ``ATLAS_WORKER_ID`` names one, so:

* two workers of one kind on one host get distinct ids (they no longer fence each other's
  transactions or fail each other's jobs), and
* a worker restarted after a crash gets the dead one's slot back, hence its id, and fails the
  job it left unfinished.

Next to each lock, ``<kind>-<n>.json`` says who holds it (PID, id, consumer group) for
``atlas status``; a record whose lock is free belongs to a worker that is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from deploy.local.processes import StackError, pid_alive

MAX_SLOTS = 64


@dataclass
class WorkerRecord:
    kind: str
    slot: int
    worker_id: str
    pid: int
    group: str
    started_at: float


@dataclass
class WorkerLease:
    record: WorkerRecord
    lock_file: IO[bytes]
    record_path: Path

    @property
    def worker_id(self) -> str:
        return self.record.worker_id

    def release(self) -> None:
        self.record_path.unlink(missing_ok=True)
        self.lock_file.close()


def workers_dir(home: Path) -> Path:
    return home / "workers"


def _try_lock(path: Path) -> IO[bytes] | None:
    handle = path.open("a+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim(home: Path, kind: str, group: str, worker_id: str | None = None) -> WorkerLease:
    """The lowest free slot of ``kind``; StackError if ``worker_id`` is taken or none is free."""
    folder = workers_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(1, MAX_SLOTS + 1):
        lock_path = folder / f"{kind}-{slot}.lock"
        record_path = lock_path.with_suffix(".json")
        handle = _try_lock(lock_path)
        if handle is None:
            if worker_id is not None and _holder_id(record_path) == worker_id:
                raise StackError(
                    f"worker id {worker_id!r} is in use by {kind} worker pid"
                    f" {_holder_pid(record_path)}; give this one another ATLAS_WORKER_ID"
                )
            continue
        record = WorkerRecord(
            kind=kind,
            slot=slot,
            worker_id=worker_id or f"{socket.gethostname()}-{kind}-{slot}",
            pid=os.getpid(),
            group=group,
            started_at=time.time(),
        )
        temporary = record_path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(record)))
        temporary.replace(record_path)
        return WorkerLease(record, handle, record_path)
    raise StackError(f"{MAX_SLOTS} {kind} workers already run on this host")


def _read(record_path: Path) -> WorkerRecord | None:
    try:
        return WorkerRecord(**json.loads(record_path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _holder_id(record_path: Path) -> str | None:
    record = _read(record_path)
    return record.worker_id if record else None


def _holder_pid(record_path: Path) -> int | None:
    record = _read(record_path)
    return record.pid if record else None


def running(home: Path) -> list[WorkerRecord]:
    """The workers alive on this host, by kind and slot. Reads records and checks PIDs only:
    probing the locks could make a worker starting at that moment skip its slot."""
    found = []
    for record_path in workers_dir(home).glob("*-*.json"):
        record = _read(record_path)
        if record is not None and pid_alive(record.pid, "atlas"):
            found.append(record)
    return sorted(found, key=lambda r: (r.kind, r.slot))
