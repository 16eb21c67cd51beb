"""Applying the store's migrations, in order and exactly once (``migrate`` is idempotent).

The migrations themselves are in ``store/migration_steps.py``; ``store/ddl.py`` renders them
for one server or, given a cluster name (``ATLAS_CLICKHOUSE_CLUSTER``), for a ClickHouse
cluster. A ledger table, ``atlas_migrations``, records what was applied; on a cluster it is
replicated and distributed like every other table, so any node sees the same ledger.
"""

from __future__ import annotations

import textwrap

from clickhouse_connect.driver.client import Client

from store.ddl import Migration, render
from store.migration_steps import MIGRATIONS

__all__ = ["MIGRATIONS", "Migration", "applied_versions", "migrate", "schema_ddl"]

LEDGER = """
CREATE TABLE IF NOT EXISTS atlas_migrations (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY version
"""


def applied_versions(client: Client, cluster: str | None = None) -> set[int]:
    """The versions the ledger records (creating the ledger first if it is missing)."""
    for statement in render(LEDGER, cluster):
        client.command(statement)
    return {
        row[0] for row in client.query("SELECT version FROM atlas_migrations FINAL").result_rows
    }


def migrate(client: Client, cluster: str | None = None) -> list[Migration]:
    """Apply every migration not yet recorded; return those applied now. With ``cluster``,
    every statement runs ``ON CLUSTER`` with replicated and Distributed tables (ValueError
    for a name that is not a plain cluster name, before anything runs)."""
    done = applied_versions(client, cluster)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.rendered(cluster):
            client.command(statement)
        client.insert(
            "atlas_migrations",
            [[migration.version, migration.name]],
            column_names=["version", "name"],
        )
        applied.append(migration)
    return applied


def schema_ddl(cluster: str | None = None) -> str:
    """Every statement ``migrate`` runs on an empty store, ledger first, as one SQL script
    (each statement ends with ';' and is headed by its migration): what to review or to run
    by hand."""
    sections = [("ledger", render(LEDGER, cluster))]
    sections += [(f"migration {m.version}: {m.name}", m.rendered(cluster)) for m in MIGRATIONS]
    return "\n".join(
        f"-- {title}\n" + "\n".join(f"{textwrap.dedent(s).strip()};\n" for s in statements)
        for title, statements in sections
    )
