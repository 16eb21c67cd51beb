"""The embedded ClickHouse engine behind the local store server: one chdb connection.

chdb allows one statement at a time per connection, so the engine runs them one after
another. Settings a request sends (``SET``) hold for that request's statement only: they
are put back afterwards, whether the statement succeeded or not, to the session's baseline
(ClickHouse's defaults plus the server's own limits). The baseline is known without asking
the engine, because no request can change the session for good: the statement policy
refuses ``SET`` and ``USE`` (reading ``system.settings`` before each request cost a third of
a small insert's time). ``max_execution_time`` never exceeds the server's limit (a client
may ask for less). Every engine failure is a `StoreError` carrying ClickHouse's error code
when the message has one.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from http import HTTPStatus
from typing import Any

DEFAULT_MAX_EXECUTION_S = 600
ERROR_CODE = re.compile(r"Code:\s*(\d+)")


def sql_string(value: str) -> str:
    """``value`` as a single-quoted ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class StoreError(Exception):
    def __init__(self, message: str, status: int = HTTPStatus.INTERNAL_SERVER_ERROR):
        super().__init__(message)
        self.status = status
        found = ERROR_CODE.search(message)
        self.code = found.group(1) if found else "1000"


class ChdbEngine:
    """One chdb connection, serialised: chdb runs one statement at a time per connection."""

    def __init__(self, path: str, max_execution_s: int = DEFAULT_MAX_EXECUTION_S):
        import chdb

        os.makedirs(path, mode=0o700, exist_ok=True)
        try:
            self._conn = chdb.connect(path)
        except Exception as exc:
            raise SystemExit(
                f"cannot open the store at {path}: {exc} (is another process using it?)"
            ) from exc
        self._lock = threading.Lock()
        self.path = path
        self.max_execution_s = max_execution_s
        # The session default is the server's limit; a client may ask for less, per request.
        self._baseline = {"max_execution_time": str(max_execution_s)}
        for name, value in self._baseline.items():
            self._run(f"SET {name} = {value}", "TabSeparated")

    def _run(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return self._conn.query(sql, fmt, params=params or {})
        except Exception as exc:
            raise StoreError(str(exc).strip()) from exc

    def explain(self, sql: str, params: dict[str, Any]) -> str:
        """The engine's parse tree of ``sql`` (parsing only, nothing runs); ``params`` are the
        query's ``{name:Type}`` values, which the parser needs to substitute."""
        with self._lock:
            result = self._run(f"EXPLAIN AST {sql}", "TabSeparated", params)
        return bytes(result.bytes()).decode(errors="replace")

    def execute(
        self,
        sql: str,
        fmt: str,
        database: str,
        settings: dict[str, str],
        params: dict[str, Any],
    ) -> Any:
        limit = settings.get("max_execution_time")
        if limit is not None:
            asked = float(limit) if limit.replace(".", "", 1).isdigit() else 0.0
            settings["max_execution_time"] = str(
                min(asked, self.max_execution_s) if asked > 0 else self.max_execution_s
            )
        with self._lock:
            self._run(f"USE `{database.replace('`', '')}`", "TabSeparated")
            try:
                for name, value in settings.items():
                    self._run(f"SET {name} = {sql_string(value)}", "TabSeparated")
                return self._run(sql, fmt, params)
            finally:
                self._restore(settings)

    def _restore(self, settings: dict[str, str]) -> None:
        """Put the settings a request changed back to the session's baseline."""
        for name in settings:
            baseline = self._baseline.get(name)
            restore = "DEFAULT" if baseline is None else baseline
            # an unknown custom setting never took effect: nothing to restore
            with contextlib.suppress(StoreError):
                self._run(f"SET {name} = {restore}", "TabSeparated")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
