"""`atlas memory`: the agents' demonstration memory (``atlas.memory.v1``): list, show, forget
entries; show or change the policy by which agents use them.

``list`` and ``show`` read the store's copy (``memory_entries``, filled by `atlas worker sink`),
so an entry appears there once the sink has stored it. ``forget`` writes to the topic itself:
a tombstone (null value) under the entry's key, which following agents apply at once and the
sink stores as a deleted row. ``policy`` changes the memory policy, a component of the
student's prompt version: a new version, through the held-out gate like any prompt.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from atlas.commands.common import (
    DAY,
    AgentOption,
    SinceOption,
    check_role,
    clear_errors,
    console,
    get_settings,
    policy_line,
)
from atlas.settings import Settings

if TYPE_CHECKING:
    from store.memory_queries import SimilarTraces, StoredMemoryEntry

app = typer.Typer(
    help="The agents' demonstration memory (atlas.memory.v1): list, show, forget entries;"
    " show or change the policy agents use it by.",
    no_args_is_help=True,
)

ENTRY_ID = re.compile(r"[0-9a-f]{8,32}")  # streams/memory.py: 32 hex digits; 8 suffice to ask
SHORT_ID = 12  # how much of an id `list` shows
OPERATOR_ROLE = "operator"  # the Kafka credentials `forget` writes with (deploy/local/roles.py)
EntryIdArgument = Annotated[
    str,
    typer.Argument(
        metavar="ENTRY_ID",
        help="The entry's id, or a unique prefix of it (at least 8 hex digits).",
    ),
]
MemoryRoleOption = Annotated[
    str, typer.Option(help="Only entries of this role (student or teacher); default: any.")
]


def entry_id_prefix(text: str) -> str:
    """``text`` as an entry-id prefix (lower-cased): a usage error unless it is 8 to 32 hex
    digits, so nothing else reaches a query or a key."""
    prefix = text.strip().lower()
    if not ENTRY_ID.fullmatch(prefix):
        raise typer.BadParameter(
            f"{text[:40]!r} is not an entry id: give 8 to 32 hex digits"
            " (`atlas memory list` shows them)",
            param_hint="ENTRY_ID",
        )
    return prefix


def _entries(
    settings: Settings, agent: str, role: str, prefix: str = "", include_deleted: bool = False
) -> list[StoredMemoryEntry]:
    from store.client import connect
    from store.memory_queries import memory_entries

    if role:
        check_role(role)
    client = connect(settings.store())
    return memory_entries(
        client,
        agent,
        role,
        prefix=prefix,
        include_deleted=include_deleted,
        include_retired=include_deleted or bool(prefix),
    )


def resolve_entry(
    settings: Settings, agent: str, entry_id: str, role: str = ""
) -> StoredMemoryEntry:
    """The one live or retired entry of ``agent`` whose id starts with ``entry_id`` (a retired
    one can still be shown, and forgotten for its texts); a usage error (one line saying what
    to do) when none or several do."""
    prefix = entry_id_prefix(entry_id)
    found = _entries(settings, agent, role, prefix)
    where = f"{agent}{'/' + role if role else ''}"
    if not found:
        raise typer.BadParameter(
            f"no live memory entry of {where} has an id starting {prefix}: see"
            f" `atlas memory list --agent {agent} --all` (a new entry appears once the sink"
            " has stored it)",
            param_hint="ENTRY_ID",
        )
    if len(found) > 1:
        ids = ", ".join(f"{e.role}/{e.entry_id}" for e in found[:5])
        raise typer.BadParameter(
            f"{prefix} is the start of {len(found)} entries of {where} ({ids}"
            f"{', ...' if len(found) > 5 else ''}): give more of the id, or --role",
            param_hint="ENTRY_ID",
        )
    return found[0]


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _retired(e: StoredMemoryEntry) -> str:
    """The retired mark with its figures; empty for an entry that is not retired."""
    if not e.retired or e.reward_when_used is None or e.reward_when_not_used is None:
        return "[yellow]retired[/]" if e.retired else ""
    return (
        f"[yellow]retired[/] {e.uses} shown: {e.reward_when_used:.3f}"
        f" vs {e.reward_when_not_used:.3f} held back"
    )


@app.command("list")
@clear_errors
def memory_list(
    ctx: typer.Context,
    agent: AgentOption,
    role: MemoryRoleOption = "",
    all_: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also entries removed (forgotten, superseded, evicted) or retired (with the"
            " figures that retired them).",
        ),
    ] = False,
) -> None:
    """The agent's memory entries as the store has them, newest first: id (its first digits;
    `show` and `forget` take them), role, source (edit or approval), reward, the trace that
    made it, when, and the input. Removed entries (with --all) are marked and have no texts:
    the store keeps only their key and when they went. Retired entries (with --all) are
    marked with their figures: uses, mean reward when used vs when no entry was used."""
    settings = get_settings(ctx)
    table = Table("id", "role", "source", "reward", "trace", "created", "input")
    entries = _entries(settings, agent, role, include_deleted=all_)
    for e in entries:
        table.add_row(
            e.entry_id[:SHORT_ID],
            e.role,
            "[red]removed[/]" if e.deleted else _retired(e) or e.source,
            "" if e.deleted else f"{e.reward:.3f}",
            e.source_trace_id[:SHORT_ID],
            f"{e.created_at:%Y-%m-%d %H:%M:%S}",
            Text(_one_line(e.input, 60)),
        )
    console.print(table)
    live = sum(not e.deleted and not e.retired for e in entries)
    console.print(f"{live} live entr{'y' if live == 1 else 'ies'} of {agent}", highlight=False)


SIMILAR_DEFAULT = 10  # how many similar traces `show` lists unless told
SIMILAR_MAX = 1000  # and at most
STATUS_STYLE = {"shown": "green", "held back": "yellow", "neither": "dim"}


@app.command("show")
@clear_errors
def memory_show(
    ctx: typer.Context,
    agent: AgentOption,
    entry_id: EntryIdArgument,
    role: MemoryRoleOption = "",
    similar: Annotated[
        int,
        typer.Option(
            min=0,
            max=SIMILAR_MAX,
            help="Also show the agent's N traces whose task is nearest to the entry's input"
            " (ClickHouse's n-gram distance), whether each was shown the entry, and their mean"
            " reward shown / held back / neither; 0: do not.",
        ),
    ] = SIMILAR_DEFAULT,
) -> None:
    """One live or retired entry in full: its input, the output agents are shown for it, its
    retrieval terms, the trace it came from and that trace's reward; then (unless --similar 0)
    what it does to tasks like it: the agent's traces nearest to its input, each with its
    distance, reward and whether the entry was shown to it, held back from it by the
    randomized holdout, or neither, and the mean reward of each group."""
    settings = get_settings(ctx)
    e = resolve_entry(settings, agent, entry_id, role)
    for name in ("entry_id", "role", "source", "source_trace_id", "created_at"):
        console.print(f"{name}: {getattr(e, name)}", highlight=False, markup=False)
    console.print(f"reward: {e.reward:.3f}", highlight=False)
    if e.retired:
        console.print(f"retired: {e.retired_reason}", highlight=False, markup=False)
    console.print(f"terms: {' '.join(e.terms)}", highlight=False, markup=False)
    console.print("input:", e.input, sep="\n", highlight=False, markup=False)
    console.print("output:", e.output, sep="\n", highlight=False, markup=False)
    if similar:
        _print_similar(settings, e, similar)


def _similar(settings: Settings, e: StoredMemoryEntry, limit: int) -> SimilarTraces:
    """``store.memory_queries.similar_traces`` for ``e`` (its full id, its role)."""
    from store.client import connect
    from store.memory_queries import similar_traces

    client = connect(settings.store())
    return similar_traces(client, e.agent_id, e.entry_id, e.role, limit)


def _print_similar(settings: Settings, e: StoredMemoryEntry, limit: int) -> None:
    """The nearest traces to ``e`` as a table, nearest first, then the mean reward per status
    on one line. A store that cannot be reached is one line saying so (the entry above stands);
    an agent with no other traces is one line saying that."""
    from deploy.local.processes import StackError
    from store.client import StoreUnavailable

    try:
        found = _similar(settings, e, limit)
    except (StackError, StoreUnavailable) as exc:
        console.print(f"\nsimilar traces: not available: {exc}", highlight=False, markup=False)
        return
    if not found.traces:
        console.print(
            f"\nsimilar traces: none: {e.agent_id} has no stored traces other than the one"
            " this entry came from",
            highlight=False,
            markup=False,
        )
        return
    console.print(
        f"\nsimilar traces: the {len(found.traces)} traces of {e.agent_id} whose task is"
        " nearest to this entry's input, nearest first (distance: ClickHouse's"
        " ngramDistanceCaseInsensitiveUTF8, 0 = the same 3-grams, 1 = none shared; the"
        " entry's own source trace left out)",
        highlight=False,
        markup=False,
    )
    table = Table("distance", "reward", "entry was", "trace", "created", "task input")
    for t in found.traces:
        table.add_row(
            f"{t.distance:.3f}",
            f"{t.reward:.3f}",
            f"[{STATUS_STYLE[t.status]}]{t.status}[/]",
            t.trace_id[:SHORT_ID],
            f"{t.created_at:%Y-%m-%d %H:%M:%S}",
            Text(_one_line(t.task_input, 60)),
        )
    console.print(table)
    means = ", ".join(
        f"{m.status} {m.mean_reward:.3f} (n={m.traces})"
        if m.mean_reward is not None
        else f"{m.status} - (n=0)"
        for m in found.means
    )
    console.print(
        f"mean reward of these traces, by whether the entry was: {means}",
        highlight=False,
        markup=False,
    )
    console.print(
        "(held back is the fair comparison for shown: the holdout is random; neither also"
        " counts tasks the entry did not match and traces from before it existed)",
        highlight=False,
        markup=False,
    )


def publish_tombstone(kafka_config: dict[str, str], topic: str, key: str) -> None:
    """One null value under ``key`` on ``topic``, returned once the broker has acknowledged it
    (acks=all, idempotent); ProducerError if it was not. librdkafka's default partitioner, as
    the stream that wrote the entry uses (streams/transactions.py), so the tombstone lands in
    the entry's partition, which compaction and the followers' ordering need."""
    from confluent_kafka import KafkaError, Message, Producer

    from runtime.producer import ProducerError

    outcome: list[KafkaError | None] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        outcome.append(error)

    producer = Producer(
        {
            **kafka_config,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "consistent_random",
            "message.timeout.ms": 30_000,
        }
    )
    producer.produce(topic, key=key.encode(), value=None, on_delivery=delivered)
    producer.flush(40)
    if not outcome or outcome[0] is not None:
        why = "no answer from the broker" if not outcome else outcome[0].str()  # type: ignore[union-attr]
        raise ProducerError(f"the tombstone for {key} was not delivered to {topic}: {why}")


@app.command("forget")
@clear_errors
def memory_forget(
    ctx: typer.Context,
    agent: AgentOption,
    entry_id: EntryIdArgument,
    role: MemoryRoleOption = "",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove an entry that is wrong or holds private content: publishes a tombstone under its
    key on atlas.memory.v1 (with the operator's Kafka credentials) and waits for the broker.
    Following agents drop the entry at once; the store marks it removed once the sink has
    stored the tombstone. Permanent: once the compacted topic is compacted the entry's text is
    gone from Kafka (the store keeps only its key). A later edit of the same input with
    another output makes the entry again. An entry the store does not have yet (the sink
    behind) cannot be forgotten here: wait until atlas memory list shows it."""
    # The memory processor (streams/memory_stream.py) does not read the topic, so its record
    # of the entry stays: an approval with another output and no lower reward can also make a
    # forgotten approval again (the same output cannot); the entry still counts towards the
    # agent's bound (a later eviction sends a second, harmless tombstone) and its output still
    # keeps approvals of other inputs from teaching it. A user's reject of the input clears it.
    from schemas.models import memory_key
    from schemas.topics import MEMORY

    settings = get_settings(ctx)
    e = resolve_entry(settings, agent, entry_id, role)
    key = memory_key(e.agent_id, e.role, e.entry_id)
    console.print(f"{key} ({e.source}, reward {e.reward:.3f}): {_one_line(e.input, 80)}")
    if not yes and not typer.confirm("Forget this entry for good?"):
        console.print("nothing forgotten")
        raise typer.Exit(1)
    publish_tombstone(settings.kafka_config(OPERATOR_ROLE), MEMORY, key)
    console.print(f"forgot {key}: tombstone acknowledged on {MEMORY}", highlight=False)


@app.command("policy")
@clear_errors
def memory_policy(
    ctx: typer.Context,
    agent: AgentOption,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Use the memory at all.")
    ] = None,
    k: Annotated[int | None, typer.Option(min=0, help="Most entries put before a task.")] = None,
    token_budget: Annotated[
        int | None, typer.Option(min=0, help="Rough tokens all of a task's entries may take.")
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(min=0, help="Show an entry only with a BM25 score above.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Publish without the held-out gate.")] = False,
    since: SinceOption = DAY,
    task: Annotated[list[str], typer.Option(help="Also gate on this built-in task family.")] = [],  # noqa: B006
) -> None:
    """Show the memory policy the agent's student uses now, or, given any option, propose a
    policy with those changes: it is published as a new student prompt version (text and
    demonstrations carried over) only if it passes the held-out gate, production's policy vs
    the proposed one, each measured with the entries agents hold now (never a held-out task's
    own), unless --force. Agents switch at their next task."""
    from atlas.agent import memory_role
    from atlas.commands.prompts import current_versions, gated, publish_versions
    from runtime.prompts import next_versions
    from schemas.models import MemoryPolicy
    from trainer.evaluation import MEMORY_POLICY

    settings = get_settings(ctx)
    current = current_versions(settings, agent)
    student = current["student"]
    asked = {"enabled": enabled, "k": k, "token_budget": token_budget, "min_score": min_score}
    changes = {name: value for name, value in asked.items() if value is not None}
    if not changes:
        console.print(f"{agent}/student v{student.version}: {policy_line(student.memory)}")
        return
    proposed = MemoryPolicy.model_validate(student.memory.model_dump() | changes)
    if proposed == student.memory:
        console.print(f"unchanged ({policy_line(proposed)}): nothing published")
        return
    lineage = None
    if not force:
        if memory_role(settings) is None:
            raise typer.BadParameter(
                "the stream keeps no memory (configs/memory.yaml: enabled: false), so there"
                " are no entries to measure a policy with: use --force"
            )
        proposal = {MEMORY_POLICY: proposed.model_dump_json()}
        current, lineage = gated(settings, agent, proposal, since, task)
    console.print(f"memory policy: {policy_line(proposed)}")
    versions = next_versions(current, {}, "manual", lineage=lineage, memory=proposed)
    publish_versions(settings, versions)
