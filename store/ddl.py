"""One migration's DDL for one ClickHouse server or for a cluster, from the same text.

Migrations are written once, for a single server (``store/migration_steps.py``). With a
cluster name (``ATLAS_CLICKHOUSE_CLUSTER``) each statement is rendered for the cluster:

* ``CREATE TABLE t (...) ENGINE = ReplacingMergeTree[(v)] ...`` becomes a replicated table
  ``t_local`` on every node (``ReplicatedReplacingMergeTree`` at
  ``/clickhouse/tables/{shard}/{database}/t_local`` with replica ``{replica}``, both server
  macros, and ``replicated_deduplication_window`` in place of the non-replicated one) plus a
  ``Distributed`` table named ``t`` over them. Queries and inserts keep using ``t``, so no
  query changes between the modes.
* ``ALTER TABLE t ...`` alters ``t_local`` and ``t`` alike (a Distributed table has the
  columns of the tables it reads).
* ``CREATE [OR REPLACE] VIEW v AS ...`` is created on every node, over the Distributed tables.

Every statement gets ``ON CLUSTER``. A row's shard is chosen by a hash of its table's sorting
key, so the rows a ReplacingMergeTree collapses always meet on one shard; the trace tables
are sharded by ``trace_id`` instead, so that a trace's revisions, judge scores and feedback
share a shard and per-trace reads (``FINAL``, the agreement joins) stay shard-local.
A statement of any other shape is refused in cluster mode rather than passed through: a new
migration must be expressible for both modes.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

DEDUP = "SETTINGS non_replicated_deduplication_window = 10000"
REPLICATED_DEDUP = "SETTINGS replicated_deduplication_window = 10000"
LOCAL_SUFFIX = "_local"
# Tables sharded by something other than their sorting key (see the module's docstring).
SHARDING_KEYS = {
    "scored_traces": "cityHash64(trace_id)",
    "judge_scores": "cityHash64(trace_id)",
    "feedback": "cityHash64(trace_id)",
}
# A cluster name as remote_servers spells it; it is quoted as a string literal in the DDL.
CLUSTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

_CREATE_TABLE = re.compile(
    r"\s*CREATE TABLE IF NOT EXISTS (?P<name>\w+) (?P<columns>\(.*\))\s*"
    r"ENGINE = ReplacingMergeTree(?:\((?P<version>\w+)\))?(?P<rest>.*)",
    re.S,
)
_ORDER_BY = re.compile(r"ORDER BY (\(.*?\)|\w+)\s*(?:$|SETTINGS|\n)", re.S)
_ALTER_TABLE = re.compile(r"\s*ALTER TABLE (?P<name>\w+) (?P<rest>.*)", re.S)
_CREATE_VIEW = re.compile(
    r"\s*(?P<create>CREATE (?:OR REPLACE )?VIEW (?:IF NOT EXISTS )?)(?P<name>\w+) AS (?P<rest>.*)",
    re.S,
)


@dataclass(frozen=True)
class Migration:
    """One step of the store's schema: its statements, as written for a single server."""

    version: int
    name: str
    statements: tuple[str, ...]

    def rendered(self, cluster: str | None = None) -> list[str]:
        """The statements to run: as written, or for ``cluster`` (see the module)."""
        return [s for statement in self.statements for s in render(statement, cluster)]


def check_cluster(cluster: str) -> str:
    """``cluster`` if it is a plain cluster name; ValueError (saying why) otherwise."""
    if not CLUSTER_NAME.fullmatch(cluster):
        raise ValueError(
            f"invalid ClickHouse cluster name {cluster!r}: letters, digits, '_', '.', '-' only"
        )
    return cluster


def render(statement: str, cluster: str | None = None) -> list[str]:
    """``statement`` for one server (unchanged, as one statement) or for ``cluster`` (one or
    two statements). ValueError for a statement the cluster mode does not know how to
    render."""
    if not cluster:
        return [statement]
    on = f"ON CLUSTER '{check_cluster(cluster)}'"
    statement = textwrap.dedent(statement).strip()
    if table := _CREATE_TABLE.fullmatch(statement):
        return _replicated_table(table, cluster, on)
    if alter := _ALTER_TABLE.fullmatch(statement):
        name, rest = alter["name"], alter["rest"].strip()
        return [
            f"ALTER TABLE {name}{LOCAL_SUFFIX} {on} {rest}",
            f"ALTER TABLE {name} {on} {rest}",
        ]
    if view := _CREATE_VIEW.fullmatch(statement):
        return [f"{view['create']}{view['name']} {on} AS {view['rest'].strip()}"]
    first_line = statement.strip().splitlines()[0] if statement.strip() else ""
    raise ValueError(f"no cluster form for the statement {first_line!r}")


def _replicated_table(table: re.Match[str], cluster: str, on: str) -> list[str]:
    name, local = table["name"], table["name"] + LOCAL_SUFFIX
    rest = table["rest"].strip()
    order_by = _ORDER_BY.search(rest)
    if order_by is None:
        raise ValueError(f"table {name} has no ORDER BY to shard by")
    rest = rest.replace(DEDUP, "").rstrip()
    engine_args = [f"'/clickhouse/tables/{{shard}}/{{database}}/{local}'", "'{replica}'"]
    if table["version"]:
        engine_args.append(table["version"])
    sharding_key = SHARDING_KEYS.get(name, f"cityHash64{_as_tuple(order_by[1])}")
    return [
        f"CREATE TABLE IF NOT EXISTS {local} {on} {table['columns']}\n"
        f"ENGINE = ReplicatedReplacingMergeTree({', '.join(engine_args)})\n"
        f"{rest}\n{REPLICATED_DEDUP}",
        f"CREATE TABLE IF NOT EXISTS {name} {on} AS {local}\n"
        f"ENGINE = Distributed('{cluster}', currentDatabase(), {local}, {sharding_key})",
    ]


def _as_tuple(key: str) -> str:
    return key if key.startswith("(") else f"({key})"
