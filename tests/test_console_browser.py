"""The web console in a real browser (Playwright driving Debian's chromium) on the real stack:
the console runs as `atlas up --console` starts it (its own process), the sink stores what
reaches Kafka, and the history comes through the store writer from the test factories.

It loads every page, searches a trace, follows a job to the version it published, rolls a
prompt back and sees the agent's production version change on the prompts topic, asks for a
retrain and finds the trigger stored, and is refused without the password. Every page is
screenshotted into the test's tmp folder (printed); with ATLAS_CONSOLE_SCREENSHOTS set, the
screenshots are copied there too.
"""

from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas import stack
from atlas.actions import current_versions
from atlas.commands.common import publish_as_learner
from atlas.console.app import console_password
from atlas.console.server import ConsoleState, stop_console
from atlas.settings import Settings
from consumers.sink import ClickHouseSink
from deploy.local.processes import free_port
from runtime.checkpoints import current_checkpoints
from store.client import connect
from store.queries import checkpoint_history, prompt_history, stored_trigger
from tests.console_data import EDIT, checkpoint_lineage, prompt_lineage, seed_history
from tests.workers import eventually, stack_cli

CHROMIUM = Path("/usr/bin/chromium")  # Debian's, installed by deploy/setup.sh
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="apt-get install chromium"),
]


@pytest.fixture(scope="module")
def console(stack_settings: Settings) -> Iterator[ConsoleState]:
    state = stack.start_console(stack_settings, free_port())
    assert stack_settings.local_stack()["console"]["pid"] == state.pid  # `atlas down` stops it
    try:
        yield state
    finally:
        stop_console(state)


@pytest.fixture(scope="module")
def sink(stack_settings: Settings) -> Iterator[None]:
    target = stack_settings.store()
    stop = threading.Event()
    worker = ClickHouseSink(stack_settings.kafka_config(), lambda: connect(target))
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def report_progress(settings: Settings, agent: str, progress: float) -> None:
    """A worker's RUNNING report of the job ``live-<agent>``, on atlas.jobs.v1."""
    from runtime.producer import EventProducer
    from schemas.models import JobStatus

    status = JobStatus(
        job_id=f"live-{agent}",
        trigger_id=f"trigger-live-{agent}",
        kind="grpo",
        agent_id=agent,
        state="RUNNING",
        seq=int(progress * 10),
        progress=progress,
        message=f"step {int(progress * 10)} of 10",
    )
    with EventProducer(settings.kafka_config(), codec=settings.codec()) as producer:
        producer.send(status)


def labels_now(settings: Settings, agent: str) -> dict[str, int]:
    """The student's labels on the prompts topic now: label -> version."""
    from runtime.prompts import current_labels

    labels = current_labels(settings.kafka_config(), agent, settings.codec())
    return {label: v.version for (role, label), v in labels.items() if role == "student"}


class Shots:
    """Screenshots of the pages, in order, into ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.taken: list[Path] = []

    def take(self, page: object, name: str) -> None:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        self.taken.append(path)

    def publish(self) -> None:
        print(f"\nconsole screenshots: {self.folder}")
        for path in self.taken:
            print(f"  {path.name}")
        extra = os.environ.get("ATLAS_CONSOLE_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            for path in self.taken:
                shutil.copy(path, Path(extra) / path.name)
            print(f"copied to {extra}")


def test_the_console_in_a_browser(
    stack_settings: Settings, console: ConsoleState, sink: None, tmp_path: Path
) -> None:
    agent = f"console-{uuid.uuid4().hex[:6]}"
    client = connect(stack_settings.store())
    seeded = seed_history(client, agent)
    first, second = prompt_lineage(agent, seeded)
    checkpoints = checkpoint_lineage(agent)
    # what a job, `prompts set` and the GRPO worker publish, as the learner
    publish_as_learner(stack_settings, [first, second, *checkpoints])
    eventually(lambda: len(prompt_history(client, agent)) == 2, 60, "versions stored", 0.5)
    eventually(lambda: len(checkpoint_history(client, agent)) == 2, 60, "checkpoints", 0.5)
    password = console_password(stack_settings).get_secret_value()
    shots = Shots(tmp_path / "screenshots")
    shots.folder.mkdir()
    expect = playwright_api.expect
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = browser.new_context(
                http_credentials={"username": "atlas", "password": password},
                viewport={"width": 1360, "height": 900},
            )
            context.set_default_timeout(60_000)
            page = context.new_page()

            # Agents: the reward table, the plotly trend (drawn by the bundled plotly.js), alerts.
            page.goto(f"{console.url}/agents")
            expect(page.locator("#agents")).to_contain_text(agent)
            expect(page.locator("#trend .main-svg").first).to_be_visible()
            expect(page.locator("#alerts")).to_contain_text("reward_drop")
            shots.take(page, "agents")

            # Traces: search by agent and time, open the revised trace.
            page.goto(f"{console.url}/traces")
            page.fill("input[name=agent]", agent)
            page.fill("input[name=since]", "50m")
            page.click("#search-button")
            expect(page.locator("#traces a")).to_have_count(1)
            shots.take(page, "trace-search")
            page.fill("input[name=since]", "")
            page.fill("input[name=reward_max]", "0.3")
            page.click("#search-button")
            page.wait_for_url("**reward_max=0.3**")
            low = page.locator("#traces tr").count() - 1
            assert 0 < low < 24
            page.goto(f"{console.url}/traces/{seeded.edited_trace}")
            expect(page.locator("#steps .step")).to_have_count(3)
            expect(page.locator("body")).to_contain_text("revision 2")
            expect(page.locator("#feedback")).to_contain_text(EDIT)
            expect(page.locator("table.judges").first).to_contain_text("looks right")
            shots.take(page, "trace")

            # Jobs: a running job's progress moves on the page by itself (it refreshes while a
            # job runs) as its reports reach atlas.jobs.v1.
            report_progress(stack_settings, agent, 0.3)
            page.goto(f"{console.url}/jobs?agent={agent}")
            expect(page.locator("#jobs")).to_contain_text("SUCCEEDED")
            expect(page.locator("#jobs")).to_contain_text("30%")
            report_progress(stack_settings, agent, 0.7)
            expect(page.locator("#jobs")).to_contain_text("70%", timeout=30_000)
            shots.take(page, "jobs")
            page.click(f"text={seeded.job_id}")
            expect(page.locator("#figures")).to_contain_text("heldout_candidate_reward")
            expect(page.locator("#lineage")).to_contain_text(seeded.trigger_id)
            shots.take(page, "job")
            page.click("#lineage a.published")
            row = page.locator("#prompt-student-2")
            expect(row).to_contain_text("gepa")
            expect(row.locator(".labels")).to_contain_text("production")
            shots.take(page, "versions")

            # Diff of v2 against its parent.
            row.locator("text=diff vs parent").click()
            expect(page.locator("#diff .add")).to_contain_text("Show the sum first")
            expect(page.locator("#diff .del")).to_contain_text("Be brief.")
            shots.take(page, "diff")

            # Rollback: confirm, then the agent's production version moves to v3 = v1's text.
            page.goto(f"{console.url}/versions/{agent}")
            page.click("#rollback-student")
            expect(page.locator("body")).to_contain_text(
                f"atlas prompts rollback --agent {agent} --role student"
            )
            shots.take(page, "rollback-confirm")
            page.click("#confirm")
            expect(page.locator("#done")).to_contain_text("published as v3")
            shots.take(page, "rollback-done")
            live = current_versions(stack_settings, agent)["student"]
            assert (live.version, live.parent_version, live.source) == (3, 2, "rollback")
            assert live.text == first.text
            cli = stack_cli(stack_settings)
            eventually(lambda: "3 *" in cli("prompts", "list", "--agent", agent), 60, "v3 in use")
            page.goto(f"{console.url}/versions/{agent}")
            expect(page.locator("#prompt-student-3 .labels")).to_contain_text("production")
            shots.take(page, "versions-after-rollback")

            # Labels: put one on v2 and take it off again, as `atlas prompts label` does.
            labelling = page.locator("#prompt-student-2 form.label-form")
            labelling.locator("input[name=label]").fill("staging")
            labelling.locator("button").click()
            expect(page.locator("body")).to_contain_text(
                f"atlas prompts label --agent {agent} --role student --label staging --version 2"
            )
            page.click("#confirm")
            expect(page.locator("#done")).to_contain_text(f"labelled {agent}/student v2 staging")
            assert labels_now(stack_settings, agent) == {"production": 3, "staging": 2}
            page.goto(f"{console.url}/versions/{agent}")
            expect(page.locator("#prompt-student-2 .labels")).to_contain_text("staging")
            shots.take(page, "versions-labelled")
            page.locator("#prompt-student-2 a.unlabel").click()
            page.click("#confirm")
            expect(page.locator("#done")).to_contain_text("removed label staging")
            assert labels_now(stack_settings, agent) == {"production": 3}
            page.goto(f"{console.url}/versions/{agent}")

            # Checkpoint rollback: v1's weights come back as v3, on the checkpoints topic.
            expect(page.locator("#checkpoint-student-2")).to_contain_text("in use")
            page.locator("#checkpoint-student-1 a").click()
            expect(page.locator("body")).to_contain_text(
                f"atlas checkpoints rollback --agent {agent} --role student --to 1"
            )
            page.click("#confirm")
            expect(page.locator("#done")).to_contain_text("checkpoint v1 restored as v3")
            now = current_checkpoints(
                stack_settings.kafka_config(), agent, ["student"], stack_settings.codec()
            )["student"]
            assert (now.version, now.parent_version, now.source) == (3, 2, "rollback")
            assert now.uri == checkpoints[0].uri and now.sha256 == checkpoints[0].sha256
            eventually(lambda: len(checkpoint_history(client, agent)) == 3, 60, "v3 stored", 0.5)
            page.goto(f"{console.url}/versions/{agent}")
            expect(page.locator("#checkpoint-student-3")).to_contain_text("in use")
            shots.take(page, "versions-after-checkpoint-rollback")

            # Retrain: the trigger the CLI would send, stored by the sink.
            kinds = page.locator("#retrain select[name=kind] option").all_inner_texts()
            assert kinds == ["gepa", "grpo", "rim"]  # every job kind the CLI can ask for
            page.select_option("#retrain select[name=kind]", "gepa")
            page.fill("#retrain input[name=window]", "12h")
            page.click("#retrain button")
            expect(page.locator("body")).to_contain_text(
                f"atlas retrain gepa --agent {agent} --since 12h"
            )
            page.click("#confirm")
            done = page.locator("#done").inner_text()
            trigger_id = done.split()[1]
            trigger = eventually(lambda: stored_trigger(client, trigger_id), 60, "trigger")
            assert (trigger.agent_id, trigger.kind, trigger.requested_by) == (
                agent,
                "gepa",
                "operator",
            )
            assert trigger.reason == "operator request (12h of traces)"
            shots.take(page, "retrain-done")

            # Hostile search input: a readable 400 page.
            answer = page.goto(f"{console.url}/traces?reward_min=NaN&agent={agent}")
            assert answer is not None and answer.status == 400
            expect(page.locator("#error")).to_contain_text("reward from")
            shots.take(page, "bad-search")

            # Without the password: refused, in the browser and to a plain client.
            wrong = browser.new_context(
                http_credentials={"username": "atlas", "password": "not-the-password"}
            ).new_page()
            refused = wrong.goto(f"{console.url}/agents")
            assert refused is not None and refused.status == 401
            assert agent not in wrong.content()
            shots.take(wrong, "wrong-password")
            # (headless chromium, given no credentials, ends the navigation with this error)
            with pytest.raises(playwright_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
                browser.new_context().new_page().goto(f"{console.url}/agents")
            refused = browser.new_context().request.get(f"{console.url}/versions/{agent}")
            assert refused.status == 401 and agent not in refused.text()
        finally:
            browser.close()
            shots.publish()
    with pytest.raises(urllib.error.HTTPError) as no_password:
        urllib.request.urlopen(f"{console.url}/versions/{agent}", timeout=10)
    assert no_password.value.code == 401
