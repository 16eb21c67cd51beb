"""The web console without a broker: its pages over a real (embedded) ClickHouse store seeded
through the store writer, its locks (credentials, host, CSRF), and hostile search input, which
gets a readable 400 or no rows, never a 500. The browser tests on the real stack are in
test_console_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from atlas.console.app import create_app, csrf_token
from atlas.settings import Settings
from store.client import connect
from store.migrations import migrate
from tests.console_data import EDIT, Seeded, seed_history

PASSWORD = SecretStr("console-test-password-0123456789")
AGENT = "console-unit"


@pytest.fixture(scope="module")
def seeded_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Seeded]]:
    home = tmp_path_factory.mktemp("console-home")
    url = f"chdb://{home / 'chdb'}"
    client = connect(url)
    migrate(client)
    seeded = seed_history(client, AGENT)
    settings = Settings(home=home, clickhouse_url=url)
    app = create_app(settings, PASSWORD)
    with TestClient(app, base_url="http://127.0.0.1:8770") as browser:
        browser.auth = ("atlas", PASSWORD.get_secret_value())
        yield browser, seeded


def test_every_store_page_renders_the_seeded_history(
    seeded_console: tuple[TestClient, Seeded],
) -> None:
    browser, seeded = seeded_console
    agents = browser.get("/agents")
    assert agents.status_code == 200 and AGENT in agents.text
    assert "reward_drop" in agents.text and "firing" in agents.text
    assert '"type": "scatter"' in agents.text  # the trend's plotly figure
    trace = browser.get(f"/traces/{seeded.edited_trace}")
    assert trace.status_code == 200
    assert "revision 2" in trace.text and "the user edited the answer" in trace.text
    assert EDIT in trace.text and "teacher · review" in trace.text
    assert "reference_match" in trace.text and "looks right" in trace.text  # judges, rationale
    job = browser.get(f"/jobs/{seeded.job_id}")
    assert job.status_code == 200 and "SUCCEEDED" in job.text
    assert "heldout_candidate_reward" in job.text and seeded.trigger_id in job.text
    assert browser.get("/jobs").status_code == 200
    bundle = browser.get("/static/plotly.min.js")
    assert bundle.headers["content-type"].startswith("text/javascript")


def test_the_trace_search_filters_by_agent_reward_time_and_version(
    seeded_console: tuple[TestClient, Seeded],
) -> None:
    browser, seeded = seeded_console
    every = browser.get("/traces", params={"agent": AGENT})
    assert every.text.count("/traces/") == 24
    v1 = browser.get("/traces", params={"agent": AGENT, "version": "2", "since": "13h"})
    assert 0 < v1.text.count("/traces/") < 24
    low = browser.get("/traces", params={"agent": AGENT, "reward_max": "0.0"})
    assert low.text.count("/traces/") == 0
    nobody = browser.get("/traces", params={"agent": "nobody"})
    assert nobody.status_code == 200 and nobody.text.count("/traces/") == 0
    assert seeded.low_trace[:12] in browser.get("/traces", params={"agent": AGENT}).text
    # The reward filter reads each trace's latest revision only.
    first, latest = (repr(r) for r in seeded.edited_rewards)
    for reward, found in ((first, False), (latest, True)):
        exact = {"agent": AGENT, "reward_min": reward, "reward_max": reward}
        assert (seeded.edited_trace[:12] in browser.get("/traces", params=exact).text) == found


HOSTILE = [
    {"agent": "' OR 1=1; DROP TABLE scored_traces --"},
    {"agent": "x" * 5000},
    {"reward_min": "NaN"},
    {"reward_max": "inf"},
    {"reward_min": "1e400"},
    {"version": "99999999999999"},
    {"version": "1; SELECT 1"},
    {"since": "9999999d"},
    {"since": "0001-01-01"},
    {"until": "not a time"},
    {"limit": "-1"},
    {"agent": "a\x00b"},
    {"agent": "<script>alert(1)</script>"},
]


@pytest.mark.parametrize("query", HOSTILE, ids=lambda q: repr(q)[:40])
def test_hostile_search_input_is_a_readable_400_or_no_rows(
    seeded_console: tuple[TestClient, Seeded], query: dict[str, str]
) -> None:
    browser, _ = seeded_console
    answer = browser.get("/traces", params=query)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert 'id="error"' in answer.text and "Traceback" not in answer.text
    else:
        assert answer.text.count("/traces/") == 0
    assert "<script>alert" not in answer.text  # every value is escaped on the page
    assert browser.get("/traces", params={"agent": AGENT}).text.count("/traces/") == 24


def test_hostile_ids_in_paths_find_nothing(seeded_console: tuple[TestClient, Seeded]) -> None:
    browser, _ = seeded_console
    for path in ("/traces/' OR ''='", "/jobs/%00", "/traces/" + "z" * 300):
        assert browser.get(path).status_code in (400, 404)
    diff = browser.get(f"/versions/{AGENT}/diff", params={"role": "root", "a": "0", "b": "1"})
    assert diff.status_code == 400


def test_requests_without_the_password_or_from_another_host_are_refused(
    seeded_console: tuple[TestClient, Seeded],
) -> None:
    browser, _ = seeded_console
    for auth in (None, ("atlas", "wrong"), ("root", PASSWORD.get_secret_value())):
        answer = browser.get("/agents", auth=auth)  # type: ignore[arg-type]
        assert answer.status_code == 401 and AGENT not in answer.text
        assert answer.headers["www-authenticate"].startswith("Basic")
    garbage = browser.get(
        "/agents",
        auth=None,  # type: ignore[arg-type]
        headers={"Authorization": "Basic !!!not-base64"},
    )
    assert garbage.status_code == 401
    rebound = browser.get("/agents", headers={"Host": "evil.example:8770"})
    assert rebound.status_code == 400
    assert browser.get("/ping", auth=None).text == "ok"  # type: ignore[arg-type]


def test_an_action_needs_the_confirm_forms_token_and_its_own_origin(
    seeded_console: tuple[TestClient, Seeded],
) -> None:
    browser, _ = seeded_console
    confirm = browser.get(
        "/actions/prompt-rollback", params={"agent": AGENT, "role": "student", "to": "1"}
    )
    assert confirm.status_code == 200
    assert f"atlas prompts rollback --agent {AGENT} --role student --to 1" in confirm.text
    assert csrf_token(PASSWORD) in confirm.text
    form = {"agent": AGENT, "role": "student", "to": "1"}
    assert browser.post("/actions/prompt-rollback", data=form).status_code == 400
    forged = {**form, "csrf": "0" * 64}
    assert browser.post("/actions/prompt-rollback", data=forged).status_code == 400
    elsewhere = browser.post(
        "/actions/prompt-rollback",
        data={**form, "csrf": csrf_token(PASSWORD)},
        headers={"Origin": "http://evil.example"},
    )
    assert elsewhere.status_code == 400 and "another site" in elsewhere.text
    bad = browser.get("/actions/retrain", params={"agent": AGENT, "kind": "sql", "window": "1y"})
    assert bad.status_code == 400 and "kind: one of gepa, grpo, rim" in bad.text
    assert browser.get("/actions/format-disk", params={"agent": AGENT}).status_code == 400


def test_the_password_file_is_private_and_made_once(tmp_path: Path) -> None:
    from atlas.console.app import console_password

    settings = Settings(home=tmp_path / "home")
    first = console_password(settings)
    path = settings.secrets_dir / "console.password"
    assert path.stat().st_mode & 0o777 == 0o600
    assert console_password(settings).get_secret_value() == first.get_secret_value()


def test_live_job_reports_add_to_the_stores_only_when_they_are_further() -> None:
    from datetime import UTC, datetime, timedelta

    from atlas.console.live import merged_reports, merged_states
    from schemas.models import JobStatus

    at = datetime(2026, 11, 27, 12, tzinfo=UTC)

    def report(job: str, seq: int, minutes: int = 0) -> JobStatus:
        return JobStatus(
            job_id=job,
            trigger_id="t",
            kind="gepa",
            agent_id="a",
            state="RUNNING",
            seq=seq,
            updated_at=at + timedelta(minutes=minutes),
        )

    stored = [report("old", 3, 0), report("ahead", 2, 1)]
    live = {"ahead": report("ahead", 5, 5), "old": report("old", 1, 9), "new": report("new", 1, 7)}
    merged = merged_states(stored, live)
    assert [(j.job_id, j.seq) for j in merged] == [("new", 1), ("ahead", 5), ("old", 3)]
    assert [r.seq for r in merged_reports(stored[1:], live["ahead"])] == [2, 5]
    assert [r.seq for r in merged_reports(stored[:1], live["old"])] == [3]
    assert [r.seq for r in merged_reports([], live["new"])] == [1]
