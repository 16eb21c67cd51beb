"""The console's pages: agents (reward trend, alerts), traces (search, one trace), jobs (live
progress, figures, lineage) and versions (prompts and checkpoints, labels, diff).

Every read goes through ``store/`` (the store) or ``runtime/`` (what the topics say now).
"""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from typing import Any, get_args

from clickhouse_connect.driver.client import Client
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from atlas.console import params
from atlas.console.app import BadInput, page
from atlas.settings import Settings
from schemas.models import JobKind, JobStatus

router = APIRouter()


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> Client:
    from store.client import connect

    return connect(_settings(request).store())


def _live_jobs(request: Request) -> dict[str, JobStatus]:
    follower = request.app.state.jobs
    return {} if follower is None else follower.latest()


@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/agents", 303)


def reward_trend(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A plotly figure: mean reward by hour, one line per agent and student prompt version."""
    lines: dict[str, dict[str, list[Any]]] = {}
    for row in rows:
        name = f"{row['agent_id']} student v{row['student_version']}"
        line = lines.setdefault(name, {"x": [], "y": [], "n": []})
        line["x"].append(row["hour"].isoformat())
        line["y"].append(round(float(row["mean"]), 4))
        line["n"].append(int(row["traces"]))
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": line["x"],
            "y": line["y"],
            "customdata": line["n"],
            "hovertemplate": "%{y:.3f} over %{customdata} traces<extra>%{fullData.name}</extra>",
        }
        for name, line in lines.items()
    ]
    layout = {
        "margin": {"l": 50, "r": 20, "t": 10, "b": 40},
        "height": 320,
        "yaxis": {"title": {"text": "mean reward"}},
        "legend": {"orientation": "h"},
    }
    return {"data": data, "layout": layout}


@router.get("/agents", response_class=HTMLResponse)
def agents(request: Request, window: str | None = None) -> HTMLResponse:
    """Each agent's reward over the window, its trend by hour and version, and its alerts."""
    from store.monitoring import load_sql
    from store.queries import current_alerts, reward_by_agent, rows_as_dicts

    written, length = params.window(window, "7d")
    since = datetime.now(UTC) - length
    client = _store(request)
    trend = rows_as_dicts(client, load_sql("reward_by_hour"), {"since": since, "agent": ""})
    return page(
        request,
        "agents.html",
        window=written,
        summary=reward_by_agent(client, since),
        chart=reward_trend(trend),
        alerts=current_alerts(client, firing_only=False),
    )


@router.get("/traces", response_class=HTMLResponse)
def traces(
    request: Request,
    agent: str | None = None,
    since: str | None = None,
    until: str | None = None,
    reward_min: str | None = None,
    reward_max: str | None = None,
    version: str | None = None,
    limit: str | None = None,
) -> HTMLResponse:
    """The trace search: every filter given narrows it; the latest revision of each trace."""
    from store.console_queries import MAX_SEARCH_ROWS, TraceSearch, search_traces

    search = TraceSearch(
        agent=params.text(agent, "agent"),
        since=params.instant(since, "since"),
        until=params.instant(until, "until"),
        reward_min=params.number(reward_min, "reward from"),
        reward_max=params.number(reward_max, "reward to"),
        version=params.integer(version, "version"),
        limit=params.integer(limit, "limit", 1, MAX_SEARCH_ROWS) or 100,
    )
    form = {
        "agent": agent or "",
        "since": since or "",
        "until": until or "",
        "reward_min": reward_min or "",
        "reward_max": reward_max or "",
        "version": version or "",
    }
    return page(request, "traces.html", form=form, rows=search_traces(_store(request), search))


@router.get("/traces/{trace_id}", response_class=HTMLResponse)
def trace(request: Request, trace_id: str) -> HTMLResponse:
    """One trace: the closed loop's steps, each revision's reward, judges and rationales, and
    the feedback that made the later revisions."""
    from store.console_queries import trace_detail

    found = trace_detail(_store(request), params.text(trace_id, "trace id") or "")
    if found is None:
        return page(request, "error.html", 404, title="Not found", message="no such trace")
    by_revision: dict[int, list[dict[str, Any]]] = {}
    for judge in found.judges:
        by_revision.setdefault(judge["revision"], []).append(judge)
    return page(request, "trace.html", trace=found, judges=by_revision)


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, agent: str | None = None) -> HTMLResponse:
    """Every job's last report, newest first (live from atlas.jobs.v1 when it is ahead of the
    store); the page refreshes itself while one runs."""
    from atlas.console.live import merged_states
    from consumers.jobs import TERMINAL
    from store.queries import latest_job_states

    agent = params.text(agent, "agent")
    live = {k: v for k, v in _live_jobs(request).items() if agent in (None, v.agent_id)}
    states = merged_states(latest_job_states(_store(request), agent or ""), live)
    running = any(job.state not in TERMINAL for job in states)
    return page(request, "jobs.html", jobs=states, running=running, agent=agent or "")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job(request: Request, job_id: str) -> HTMLResponse:
    """A job's reports in order, its gate figures, and its lineage: trigger (with the data
    window) -> job -> the versions it published."""
    from atlas.console.live import merged_reports
    from consumers.jobs import TERMINAL
    from store.console_queries import job_outputs
    from store.queries import job_reports, stored_trigger

    client = _store(request)
    job_id = params.text(job_id, "job id") or ""
    reports = merged_reports(job_reports(client, job_id), _live_jobs(request).get(job_id))
    if not reports:
        return page(request, "error.html", 404, title="Not found", message="no such job")
    last = reports[-1]
    prompts, checkpoints = job_outputs(client, last.job_id)
    return page(
        request,
        "job.html",
        reports=reports,
        last=last,
        running=last.state not in TERMINAL,
        trigger=stored_trigger(client, last.trigger_id),
        prompts=prompts,
        checkpoints=checkpoints,
    )


@router.get("/versions", response_class=HTMLResponse)
def versions_index(request: Request) -> HTMLResponse:
    from store.console_queries import known_agents

    return page(request, "versions_index.html", agents=known_agents(_store(request)))


@router.get("/versions/{agent}", response_class=HTMLResponse)
def versions(request: Request, agent: str) -> HTMLResponse:
    """The agent's prompt versions with their labels (production = what agents use now) and
    its checkpoints with the one in use, each with rollback and diff links."""
    from runtime.checkpoints import current_checkpoints
    from runtime.prompts import current_labels
    from store.queries import checkpoint_history, prompt_history

    agent = params.text(agent, "agent") or ""
    settings, client = _settings(request), _store(request)
    prompts = prompt_history(client, agent)
    labels: dict[tuple[str, int], list[str]] = {}
    for (role, label), version in current_labels(
        settings.kafka_config(), agent, settings.codec()
    ).items():
        share = "" if version.traffic_share is None else f" {version.traffic_share:.0%}"
        labels.setdefault((role, version.version), []).append(label + share)
    checkpoints = checkpoint_history(client, agent)
    live = (
        current_checkpoints(
            settings.kafka_config(), agent, {c.role for c in checkpoints}, settings.codec()
        )
        if checkpoints
        else {}
    )
    in_use = {(role, c.version) for role, c in live.items()}
    return page(
        request,
        "versions.html",
        agent=agent,
        prompts=prompts,
        labels=labels,
        checkpoints=checkpoints,
        in_use=in_use,
        job_kinds=get_args(JobKind),
    )


@router.get("/versions/{agent}/diff", response_class=HTMLResponse)
def diff(
    request: Request,
    agent: str,
    role: str | None = None,
    a: str | None = None,
    b: str | None = None,
) -> HTMLResponse:
    """The text of prompt version ``a`` against version ``b`` of the agent's ``role``, line by
    line (version 0 is the seed)."""
    from atlas.actions import agent_seeds
    from store.queries import prompt_version

    agent, role = params.text(agent, "agent") or "", params.role(role)
    numbers = [params.integer(v, name, 0) for v, name in ((a, "from"), (b, "to"))]
    if None in numbers:
        raise BadInput("give both versions to compare (from and to)")
    client, texts = _store(request), []
    for number in numbers:
        if number == 0:
            texts.append(agent_seeds(_settings(request)).snapshot(agent)[role].text)
            continue
        stored = prompt_version(client, agent, role, number)  # type: ignore[arg-type]
        if stored is None:
            return page(request, "error.html", 404, title="Not found", message=f"no v{number}")
        texts.append(stored.text)
    lines = list(
        difflib.unified_diff(
            texts[0].splitlines(),
            texts[1].splitlines(),
            f"v{numbers[0]}",
            f"v{numbers[1]}",
            lineterm="",
        )
    )
    return page(request, "diff.html", agent=agent, role=role, numbers=numbers, lines=lines)
