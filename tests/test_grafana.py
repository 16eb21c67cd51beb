"""The Grafana dashboard: the committed JSON is what its definition builds, provisioning holds
no credential, and every ClickHouse panel's SQL, with Grafana's template variables and the
ClickHouse plugin's macros expanded as they would be for a fixed time range, runs against a
real store seeded with the test factories' events and returns rows of the panel's shape."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from clickhouse_connect.driver.client import Client

from deploy.grafana import dashboards
from deploy.grafana.dashboards import AGENTS_SQL, CONSUMER_LAG, PANELS, SqlPanel
from schemas.models import DeadLetter, Event, JobStatus, PromptRef
from store.writer import StoreWriter
from tests.factories import interaction, scored

GRAFANA = Path(dashboards.__file__).parent
TIME_FROM = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
TIME_TO = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
INTERVAL_S = 600  # what Grafana would pick for a day over ~150 points
# Each variable's "All" as the dashboard defines it (a custom all-value goes in unformatted).
ALL_VALUES = {"agent": "''"}


def expand(sql: str, variables: dict[str, str | None]) -> str:
    """``sql`` as ClickHouse receives it from Grafana: template variables first (Grafana's
    frontend; None = "All"), then the plugin's macros (its backend, pkg/macros). Fails on any
    variable, format or macro it does not know, so a panel cannot use one untested."""

    def variable(found: re.Match[str]) -> str:
        name, form = found[1] or found[3], found[2]
        value = variables[name]
        if value is None:
            return ALL_VALUES[name]
        if form == "sqlstring":
            return "'" + value.replace("'", "''") + "'"
        assert form is None, f"format {form!r} of ${name} is not expanded here"
        return value

    sql = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)", variable, sql)
    start, end = int(TIME_FROM.timestamp()), int(TIME_TO.timestamp())
    constants = {
        "fromTime": f"toDateTime({start})",
        "toTime": f"toDateTime({end})",
        "fromTime_ms": f"fromUnixTimestamp64Milli({start * 1000})",
        "toTime_ms": f"fromUnixTimestamp64Milli({end * 1000})",
        "interval_s": str(INTERVAL_S),
    }
    functions = {
        "timeFilter": lambda c: f"{c} >= toDateTime({start}) AND {c} <= toDateTime({end})",
        "timeFilter_ms": lambda c: (
            f"{c} >= fromUnixTimestamp64Milli({start * 1000})"
            f" AND {c} <= fromUnixTimestamp64Milli({end * 1000})"
        ),
        "timeInterval": lambda c: (
            f"toStartOfInterval(toDateTime({c}), INTERVAL {INTERVAL_S} second)"
        ),
        "timeInterval_ms": lambda c: (
            f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {INTERVAL_S * 1000} millisecond)"
        ),
    }

    def macro(found: re.Match[str]) -> str:
        name, argument = found[1], found[2]
        if argument is None:
            return constants[name]
        return functions[name](argument.strip())

    sql = re.sub(r"\$__(\w+)(?:\(([^()]*)\))?", macro, sql)
    assert "$" not in sql, f"unexpanded: {sql}"
    return sql


def seeded_events() -> list[Event]:
    """Two agents over a morning, in every mode and two student prompt versions; half the
    traces have a human's verdict (a second revision), some escalated; dead letters from two
    processors; two learning jobs, one published and one rejected by the gate."""
    rng = random.Random(20)
    events: list[Event] = []
    for agent in ("agent-a", "agent-b"):
        for i in range(12):
            at = TIME_FROM + timedelta(hours=8, minutes=20 * i)
            event = interaction(rng, agent, at).model_copy(
                update={
                    "mode": ("paired", "auto", "coach")[i % 3],
                    "prompt_versions": [
                        PromptRef(role="student", version=1 + i // 6),
                        PromptRef(role="teacher", version=1),
                    ],
                }
            )
            first = scored(event, rng).model_copy(update={"escalated": i % 4 == 0})
            events.append(first)
            if i % 2 == 0:
                verdict = float(i % 4 == 0)
                events.append(
                    scored(event, rng, revision=2).model_copy(update={"human_score": verdict})
                )
    for offset, processor in enumerate(("rewards", "rewards", "sink")):
        events.append(
            DeadLetter(
                source_topic="atlas.interactions.v1",
                source_partition=0,
                source_offset=offset,
                original=b"\x00garbage",
                reason="not an atlas Avro message",
                error_type="DecodeError",
                processor=processor,
                failed_at=TIME_FROM + timedelta(hours=9, minutes=offset),
            )
        )
    for job, kind, states in (
        ("job-1", "gepa", ("QUEUED", "RUNNING", "SUCCEEDED")),
        ("job-2", "grpo", ("QUEUED", "REJECTED")),
    ):
        for seq, state in enumerate(states):
            events.append(
                JobStatus(
                    job_id=job,
                    trigger_id=f"t-{job}",
                    kind=kind,
                    agent_id="agent-a",
                    state=state,
                    seq=seq,
                    updated_at=TIME_FROM + timedelta(hours=10, minutes=seq),
                )
            )
    return events


def test_committed_dashboard_is_what_the_definition_builds() -> None:
    committed = dashboards.OUTPUT.read_text(encoding="utf-8")
    assert committed == dashboards.render(), (
        "deploy/grafana/dashboards/atlas-stream.json is stale: run "
        "`python -m deploy.grafana.dashboards` and commit it"
    )


def test_panels_use_the_provisioned_datasources_and_the_monitoring_queries() -> None:
    board = dashboards.build()
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "atlas-stream.yaml").read_text()
    )["datasources"]
    uids = {(d["type"], d["uid"]) for d in provisioned}
    used = {
        (t["datasource"]["type"], t["datasource"]["uid"])
        for p in board["panels"]
        for t in p["targets"]
    }
    assert (
        used
        == uids
        == {
            ("grafana-clickhouse-datasource", "atlas-clickhouse"),
            ("prometheus", "atlas-prometheus"),
        }
    )
    lag = [t for p in board["panels"] for t in p["targets"] if "expr" in t]
    assert [t["expr"] for t in lag] == [CONSUMER_LAG[2]]
    # Reused, not rewritten: each monitoring query's body is inside a panel's SQL.
    for name in ("summary", "reward_by_hour", "tokens_by_mode", "judge_agreement", "dead_letters"):
        assert any(dashboards.monitoring_sql(name) in p.sql for p in PANELS), name


def test_provisioning_holds_no_credentials() -> None:
    for path in sorted((GRAFANA / "provisioning").rglob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        for source in document.get("datasources", []):
            for key, value in (source.get("secureJsonData") or {}).items():
                assert re.fullmatch(r"\$\{[A-Z_]+\}", str(value)), (path, key)
            assert re.fullmatch(r"\$\{[A-Z_]+\}", str(source.get("url", "${X}")))
            for key in ("host", "username", "defaultDatabase"):
                if key in source.get("jsonData", {}):
                    assert re.fullmatch(r"\$\{[A-Z_]+\}", source["jsonData"][key]), (path, key)


def test_the_expansion_refuses_what_it_does_not_know() -> None:
    assert expand("a = ${agent:sqlstring}", {"agent": "o'k"}) == "a = 'o''k'"
    assert expand("a = ${agent:sqlstring}", {"agent": None}) == "a = ''"
    for unknown in ("$__timeGroup(t, 1h)", "${agent:csv}", "$other"):
        with pytest.raises((KeyError, AssertionError)):
            expand(unknown, {"agent": "x"})


def check_shape(spec: SqlPanel, columns: tuple[str, ...], rows: list[tuple]) -> None:
    assert columns == spec.columns, spec.title
    assert rows, f"{spec.title}: no rows"
    if spec.time_series:
        for row in rows:
            assert isinstance(row[0], datetime), spec.title
            assert TIME_FROM - timedelta(hours=1) <= row[0].replace(tzinfo=UTC) <= TIME_TO
            assert isinstance(row[-1], int | float), spec.title


def test_every_clickhouse_panel_returns_rows_of_its_shape(
    store: Client, request: pytest.FixtureRequest
) -> None:
    StoreWriter(store).write(seeded_events())
    agents = [row[0] for row in store.query(expand(AGENTS_SQL, {})).result_rows]
    assert agents == ["agent-a", "agent-b"]
    header = f"panel (store: {request.node.callspec.id})"
    print(f"\n{header:40} {'all agents':>10} {'agent-a':>8}")
    for spec in PANELS:
        counts = []
        for agent in (None, "agent-a"):
            result = store.query(expand(spec.sql, {"agent": agent, "threshold": "0.5"}))
            check_shape(spec, tuple(result.column_names), result.result_rows)
            counts.append(len(result.result_rows))
        print(f"{spec.title:40} {counts[0]:>10} {counts[1]:>8}")
    outcomes = store.query(expand(PANELS[-1].sql, {"agent": None})).result_rows
    assert outcomes == [("gepa SUCCEEDED", 1), ("grpo REJECTED", 1)]
    by_agent = dict(store.query(expand(PANELS[3].sql, {"agent": None})).result_rows)
    assert set(by_agent) == {"agent-a", "agent-b"}
    assert all(0.0 <= share <= 1.0 for share in by_agent.values())
