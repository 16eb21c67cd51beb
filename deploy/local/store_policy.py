"""What the local store lets a client run: one statement, of an allowed kind, touching only
tables inside the store.

The engine's own parser decides what a statement is (``EXPLAIN AST``), so a function or engine
name cannot hide behind quoting, case or comments the way it can from a regular expression. A
small lexer adds what the AST does not show: how many statements a request holds (chdb runs
every one of ``SELECT 1; SET readonly = 1``) and ``INFILE``/``OUTFILE`` clauses. The lexer errs
towards refusing: a ``;`` it cannot prove is inside a string or comment ends the statement.

Refused: ``SET``/``USE`` (they would stick to the shared connection), ``SYSTEM``, users, grants,
backups, attach/detach, dictionaries, functions, ``INFILE``/``OUTFILE``, and any table function,
function or engine that reaches files, URLs, other hosts or the server process.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READ_KINDS = frozenset(
    {
        "SelectWithUnionQuery",
        "ShowTables",
        "ShowCreateTableQuery",
        "DescribeQuery",
        "ExistsTableQuery",
        "Explain",
        "CheckQuery",
        "ShowProcesslistQuery",
    }
)
WRITE_KINDS = frozenset(
    {
        "InsertQuery",
        "CreateQuery",
        "AlterQuery",
        "DropQuery",
        "OptimizeQuery",
        "TruncateQuery",
        "DeleteQuery",
        "Rename",
    }
)
# Table functions, functions and engines that read or write outside the store's own tables.
OUTSIDE_NAMES = frozenset(
    {
        "file",
        "filecluster",
        "filelog",
        "filesystem",
        "url",
        "urlcluster",
        "remote",
        "remotesecure",
        "cluster",
        "clusterallreplicas",
        "distributed",
        "gcs",
        "oss",
        "cosn",
        "hive",
        "mysql",
        "materializedmysql",
        "postgresql",
        "materializedpostgresql",
        "sqlite",
        "mongodb",
        "redis",
        "jdbc",
        "odbc",
        "executable",
        "executablepool",
        "python",
        "kafka",
        "rabbitmq",
        "nats",
        "dictionary",
    }
)
OUTSIDE_PREFIXES = ("s3", "hdfs", "azure", "iceberg", "deltalake", "hudi", "paimon")
FUNCTION_NODE = re.compile(r"^\s*Function (\S+)", re.M)
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PolicyError(Exception):
    """A statement the store refuses; the message is a ClickHouse-style one-liner."""

    code = "497"  # ACCESS_DENIED


@dataclass(frozen=True)
class Verdict:
    kind: str
    read_only: bool


def _refuse(what: str) -> PolicyError:
    return PolicyError(
        f"Code: 497. DB::Exception: {what} is not allowed on the atlas local store. (ACCESS_DENIED)"
    )


def lex_words(sql: str) -> tuple[list[str], bool]:
    """The bare words of ``sql`` outside strings, quoted identifiers and comments, and whether
    anything but whitespace follows a top-level ``;``."""
    words: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            i += 1
            while i < n and sql[i] != ch:
                i += 2 if sql[i] == "\\" else 1
            i += 1
        elif sql.startswith("--", i) or ch == "#":
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch == ";":
            return words, bool(sql[i + 1 :].strip(" \t\r\n;"))
        else:
            word = WORD.match(sql, i)
            if word:
                words.append(word.group().upper())
                i = word.end()
            else:
                i += 1
    return words, False


def outside_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in OUTSIDE_NAMES or lowered.startswith(OUTSIDE_PREFIXES)


class StatementPolicy:
    """Judges statements with the engine's parser; verdicts are cached by statement text (a
    sink sends the same INSERT header thousands of times)."""

    def __init__(self, explain: Callable[[str, dict[str, Any]], str], cache_size: int = 4096):
        self._explain = explain
        self._cache: OrderedDict[str, Verdict | PolicyError] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def check(self, sql: str, read_only: bool, params: dict[str, Any] | None = None) -> Verdict:
        """The statement's verdict; raises :class:`PolicyError` if it is refused, or if
        ``read_only`` (a GET, or ``readonly=1``) and it would change anything. A verdict does
        not depend on ``params``: they are typed values, never SQL."""
        with self._lock:
            cached = self._cache.get(sql)
            if cached is not None:
                self._cache.move_to_end(sql)
        if cached is None:
            cached = self._judge(sql, params or {})
            with self._lock:
                self._cache[sql] = cached
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if isinstance(cached, PolicyError):
            raise cached
        if read_only and not cached.read_only:
            raise PolicyError(
                f"Code: 164. DB::Exception: {cached.kind} changes data, and this request is "
                "read-only (a GET, or readonly=1): send it by POST. (READONLY)"
            )
        return cached

    def _judge(self, sql: str, params: dict[str, Any]) -> Verdict | PolicyError:
        words, more = lex_words(sql)
        if more:
            return _refuse("more than one statement per request")
        for clause in ("INFILE", "OUTFILE"):
            if clause in words:
                return _refuse(f"{clause} (reading or writing the server's files)")
        if not words:
            return PolicyError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
        tree = self._explain(sql, params)
        kind = tree.split("\n", 1)[0].split(" ", 1)[0].strip()
        if kind not in READ_KINDS and kind not in WRITE_KINDS:
            leading = " ".join(words[:2])
            return _refuse(f"{leading} ({kind})")
        if "Dictionary definition" in tree:
            return _refuse("CREATE DICTIONARY")
        if "TEMPORARY" in words[:3]:
            return _refuse("a temporary table (it would outlive the request on the shared session)")
        for name in FUNCTION_NODE.findall(tree):
            if outside_name(name):
                return _refuse(f"{name}() (it reaches outside the store)")
        return Verdict(kind=kind, read_only=kind in READ_KINDS)
