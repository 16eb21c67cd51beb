"""What a ClickHouse error says about the rows it came with: refused (a bad value: the sink
dead-letters the event) or nothing (the store is away, busy, misconfigured: the batch waits)."""

from __future__ import annotations

import re

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

# ClickHouse error codes that say nothing about the rows: the store is unreachable, busy,
# misconfigured or not migrated. The batch is kept and retried, never split or dead-lettered.
TRANSIENT_CODES = frozenset(
    {159, 160, 164, 202, 209, 210, 241, 242, 252, 60, 81, 394, 425, 497, 516, 1000, 1001}
)
ERROR_CODE = re.compile(r"code: (\d+)", re.I)


def refused_by_store(exc: Exception) -> bool:
    """Whether ``exc`` is the store refusing these rows (a bad value, a type mismatch), as
    opposed to not taking any rows now: a network error (clickhouse-connect's
    OperationalError, e.g. a pooled connection the server closed) or a transient code."""
    if isinstance(exc, OperationalError):
        return False
    if isinstance(exc, DatabaseError):
        code = ERROR_CODE.search(str(exc))
        return code is None or int(code.group(1)) not in TRANSIENT_CODES
    return not isinstance(exc, (ConnectionError, TimeoutError, OSError))
