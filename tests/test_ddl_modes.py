"""The store's DDL in both modes: the committed snapshots are what the migrations generate, the
cluster form follows its rules statement by statement, and ClickHouse's own parser accepts
every cluster statement. The single-server DDL runs for real in every store test (the
``store`` fixture migrates an empty store with it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from pydantic import ValidationError

from atlas.settings import Settings
from deploy.clickhouse.snapshots import CLUSTER, SNAPSHOTS, snapshot
from store.ddl import LOCAL_SUFFIX, SHARDING_KEYS, render
from store.migrations import LEDGER, MIGRATIONS, applied_versions, migrate

CREATED = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) ")


def cluster_statements() -> list[str]:
    return render(LEDGER, CLUSTER) + [s for m in MIGRATIONS for s in m.rendered(CLUSTER)]


@pytest.mark.parametrize("path", sorted(SNAPSHOTS), ids=lambda p: p.name)
def test_committed_snapshot_is_what_the_migrations_generate(path) -> None:  # type: ignore[no-untyped-def]
    fresh = snapshot(SNAPSHOTS[path])
    statements = fresh.count(";\n")
    print(f"{path.name}: {statements} statements, {len(fresh.splitlines())} lines")
    assert path.read_text(encoding="utf-8") == fresh, (
        f"{path} is stale: run `python -m deploy.clickhouse.snapshots` and commit it"
    )


def test_one_server_runs_the_statements_as_written() -> None:
    for migration in MIGRATIONS:
        assert migration.rendered() == list(migration.statements)
    assert render(LEDGER) == [LEDGER]


def test_every_table_is_replicated_and_distributed_under_its_own_name() -> None:
    single = [s for m in MIGRATIONS for s in m.statements] + [LEDGER]
    tables = {name for s in single for name in CREATED.findall(s)}
    statements = cluster_statements()
    assert all(f"ON CLUSTER '{CLUSTER}'" in s for s in statements)
    assert not any("non_replicated_deduplication_window" in s for s in statements)
    created = [CREATED.search(s)[1] for s in statements if CREATED.search(s)]
    assert sorted(created) == sorted(tables | {t + LOCAL_SUFFIX for t in tables})
    for table in tables:
        local = next(s for s in statements if f"EXISTS {table}{LOCAL_SUFFIX} " in s)
        assert (
            f"ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{{database}}/"
            f"{table}{LOCAL_SUFFIX}', '{{replica}}'" in local
        )
        assert "replicated_deduplication_window = 10000" in local
        distributed = next(s for s in statements if f"EXISTS {table} ON CLUSTER" in s)
        assert f"Distributed('{CLUSTER}', currentDatabase(), {table}{LOCAL_SUFFIX}, " in (
            distributed
        )
    for table, key in SHARDING_KEYS.items():
        assert any(s.endswith(f"{table}{LOCAL_SUFFIX}, {key})") for s in statements)
    # A versioned ReplacingMergeTree keeps its version column behind the replication arguments.
    memory = next(s for s in statements if "EXISTS memory_entries_local" in s)
    assert "'{replica}', version)" in memory


def test_alters_change_both_tables_and_views_read_the_distributed_ones() -> None:
    single = [s for m in MIGRATIONS for s in m.statements]
    alters = [s for s in single if s.lstrip().startswith("ALTER TABLE")]
    views = [s for s in single if "VIEW" in s.split(" AS ")[0]]
    rendered = cluster_statements()
    cluster_alters = [s for s in rendered if s.startswith("ALTER TABLE")]
    assert len(cluster_alters) == 2 * len(alters)
    for pair in zip(cluster_alters[::2], cluster_alters[1::2], strict=True):
        local, distributed = (re.match(r"ALTER TABLE (\w+) ", s)[1] for s in pair)
        assert local == distributed + LOCAL_SUFFIX
    cluster_views = [s for s in rendered if " VIEW " in s.split(" AS ")[0]]
    assert len(cluster_views) == len(views)
    assert not any(LOCAL_SUFFIX in s for s in cluster_views)  # queries keep their table names


def test_bad_cluster_names_and_unknown_statements_are_refused() -> None:
    for name in ("a b", "x'; DROP TABLE t; --", "{cluster}"):
        with pytest.raises(ValueError, match="invalid ClickHouse cluster name"):
            render(LEDGER, name)
        with pytest.raises(ValidationError, match="clickhouse_cluster"):
            Settings(clickhouse_cluster=name)
    assert Settings(clickhouse_cluster="prod-eu.1").clickhouse_cluster == "prod-eu.1"
    with pytest.raises(ValueError, match="no cluster form for the statement 'DROP TABLE t'"):
        render("DROP TABLE t", CLUSTER)


def test_clickhouse_parses_every_cluster_statement(store: Client) -> None:
    """The engine's parser (formatQuery) accepts each statement as ClickHouse SQL, engines,
    macros and ON CLUSTER included; running them needs a cluster with Keeper."""
    statements = cluster_statements()
    for statement in statements:
        formatted = store.query("SELECT formatQuery({q:String})", parameters={"q": statement})
        assert formatted.result_rows[0][0].startswith(("CREATE", "ALTER"))
    print(f"ClickHouse parsed {len(statements)} cluster statements")


def test_single_server_migration_is_applied_in_full(store: Client) -> None:
    assert applied_versions(store) == {m.version for m in MIGRATIONS}
    assert migrate(store) == []


def test_the_documented_example_is_the_generated_ddl() -> None:
    doc = (Path(__file__).parents[1] / "deploy" / "clickhouse-cluster.md").read_text()
    example = re.search(r"```sql\n(.*?)```", doc, re.S)
    assert example and example[1] in snapshot(CLUSTER)


class RecordingClient:
    """Records what the runner sends; an empty ledger (a store never migrated)."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.inserts: list[tuple[str, list[list[object]]]] = []

    def command(self, statement: str) -> None:
        self.commands.append(statement)

    def query(self, sql: str) -> object:
        return type("Result", (), {"result_rows": []})()

    def insert(self, table: str, rows: list[list[object]], column_names: list[str]) -> None:
        self.inserts.append((table, rows))


def test_migrate_on_a_cluster_runs_the_cluster_ddl_and_records_each_migration() -> None:
    client = RecordingClient()
    applied = migrate(client, CLUSTER)  # type: ignore[arg-type]
    assert applied == list(MIGRATIONS)
    assert client.commands == cluster_statements()
    assert [(table, rows[0][0]) for table, rows in client.inserts] == [
        ("atlas_migrations", m.version) for m in MIGRATIONS
    ]
    with pytest.raises(ValueError, match="invalid ClickHouse cluster name"):
        migrate(RecordingClient(), "bad name")  # type: ignore[arg-type]
