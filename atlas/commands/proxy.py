"""`atlas proxy`: the OpenAI-compatible recording proxy (``ingest/proxy.py``) in the
foreground, until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from atlas.commands.common import (
    HostOption,
    MetricsPort,
    PortOption,
    clear_errors,
    configure_logging,
    console,
    worker_settings,
)

app = typer.Typer()


@app.command("proxy")
@clear_errors
def proxy(
    ctx: typer.Context,
    upstream: Annotated[
        str,
        typer.Option(
            help="The upstream's OpenAI base URL, /v1 included (what a client's base_url"
            " would be): OpenAI, vLLM, llama.cpp's server ...",
        ),
    ],
    port: PortOption = 8787,
    host: HostOption = "127.0.0.1",
    agent: Annotated[
        str,
        typer.Option(
            "--agent",
            help="Agent id of calls with neither a mapped key nor an X-Atlas-Agent header.",
        ),
    ] = "proxy",
    keys: Annotated[
        Path | None,
        typer.Option(
            help="YAML file (mode 0600) mapping agent ids to the API keys their clients send"
            " (agent: key, or agent: a list of keys); a mapped key names the agent, over the"
            " header.",
        ),
    ] = None,
    spill: Annotated[
        bool,
        typer.Option(
            help="Keep events Kafka did not acknowledge in $ATLAS_HOME/spill/proxy.jsonl and"
            " send them once Kafka is back (and on the next start)."
        ),
    ] = True,
    managed_prompts: Annotated[
        bool,
        typer.Option(
            help="Follow atlas.prompts.v1: a call with the header X-Atlas-Managed-Prompt: on gets"
            " its agent's current student prompt version (a canary's share gets the canary) in"
            " place of its system prompt, and its event names the version.",
        ),
    ] = False,
    max_body_mib: Annotated[
        int, typer.Option(min=1, max=256, help="Largest request body accepted, in MiB.")
    ] = 4,
    metrics_port: MetricsPort = None,
) -> None:
    """Forward OpenAI chat completions to --upstream and record each as an interaction.

    Point an agent's OpenAI client at http://HOST:PORT/v1 instead of the upstream: answers
    (streamed or not) come back unchanged, with the trace id they are recorded under in the
    X-Atlas-Trace-Id header; POST /v1/feedback {"trace_id", "kind", ...} records feedback on
    it. Events are produced to Kafka on a background thread after each answer is sent (Kafka
    being away never fails a call: events wait in the spill file); GET /atlas/stats shows the
    counts. The agent is named by a mapped API key, else the X-Atlas-Agent header, else --agent.
    """
    from ingest.proxy import MIB, ProxyConfig, RecordingProxy
    from ingest.serving import load_agent_keys, open_recorder, serve
    from runtime.metrics import serving

    configure_logging(logging.INFO, quiet=("uvicorn.error",))
    settings = worker_settings(ctx, metrics_port)
    try:
        config = ProxyConfig(
            upstream,
            default_agent=agent,
            agent_keys=load_agent_keys(keys) if keys is not None else {},
            max_body_bytes=max_body_mib * MIB,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    spill_path = settings.home / "spill" / "proxy.jsonl" if spill else None
    kafka = settings.kafka_config("agent")
    managed = None
    if managed_prompts:
        from ingest.managed import ManagedPrompts
        from runtime.prompts import ROLES, PromptSubscriber, StaticPrompts

        blank = StaticPrompts(dict.fromkeys(ROLES, ""))  # nothing published: left as sent
        subscriber = PromptSubscriber(kafka, blank, settings.codec(), verifier=settings.verifier())
        managed = ManagedPrompts(subscriber.start())
    recorder = open_recorder(kafka, settings.codec(), spill_path)
    console.print(
        f"recording proxy on http://{host}:{port}/v1 -> {config.upstream}"
        f" ({len(config.agent_keys)} mapped key(s); Ctrl-C stops)",
        highlight=False,
    )
    try:
        with serving(settings.metrics_host, settings.metrics_port):
            serve(RecordingProxy(config, recorder, managed=managed).app, host, port, recorder.close)
    finally:
        if managed is not None:
            managed.prompts.close()  # type: ignore[attr-defined]
    console.print(f"proxy stopped: {recorder.stats()}", highlight=False)
