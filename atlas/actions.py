"""The operator's acts that publish an event, shared by the CLI (``atlas.commands``) and the web
console (``atlas.console``), so both produce exactly the same event for the same request.

Each function checks the request, builds the event and publishes it; a request that cannot be
done raises ``ActionRefused`` (a ``ValueError``) with a message an operator can read, and
nothing is published.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from atlas.commands.common import publish_as_learner
from atlas.settings import Settings

if TYPE_CHECKING:
    from runtime.prompts import StaticPrompts
    from schemas.models import CheckpointEvent, PromptVersion, RetrainTrigger, RolloutKind


class ActionRefused(ValueError):
    """The request cannot be done as asked; ``param`` names the option at fault, if one is."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def agent_seeds(settings: Settings) -> StaticPrompts:
    """The seed prompts (version 0) of configs/agent.yaml."""
    from atlas.agent import load_agent_config

    return load_agent_config(settings.config_dir).seeds()


def seeds_with_rim(settings: Settings) -> StaticPrompts:
    """The seeds plus version 0 of the ``rim`` role: configs/rim.yaml's weights, no map."""
    from rim.calibration import RIM_ROLE
    from rim.config import load_rim_config
    from runtime.prompts import StaticPrompts

    seeds = agent_seeds(settings)
    configured = load_rim_config(settings.config_dir).as_calibration().to_text()
    return StaticPrompts({**seeds.texts, RIM_ROLE: configured}, seeds.demonstrations, seeds.memory)


def current_versions(
    settings: Settings, agent: str, seeds: StaticPrompts | None = None
) -> dict[str, PromptVersion]:
    """What the agent's runtime uses now, per role: the prompts topic, else the seeds."""
    from runtime.prompts import current_prompts

    seeds = agent_seeds(settings) if seeds is None else seeds
    return current_prompts(settings.kafka_config(), agent, seeds, settings.codec())


@dataclass(frozen=True)
class PromptRollback:
    """A published prompt rollback: the version whose parts came back, and the new versions."""

    restored: PromptVersion
    published: list[PromptVersion]

    @property
    def restored_what(self) -> str:
        student = self.restored.role == "student"  # its memory policy came back too
        return "text, demonstrations and memory policy" if student else "text"


def rollback_prompt(settings: Settings, agent: str, role: str, to: int | None) -> PromptRollback:
    """Restore version ``to`` (default: the current version's parent) of the agent's ``role``
    as a new version, a child of the current one, published by the learner (agents pick it up
    live). The student's memory policy comes back with its text and demonstrations. The
    ``rim`` role is the judges' calibration (version 0: configs/rim.yaml), which reward
    workers pick up live."""
    from runtime.prompts import NoParentVersion, VersionNotStored, next_versions, restored_prompt
    from store.client import connect
    from store.queries import prompt_version

    seeds = seeds_with_rim(settings)
    current = current_versions(settings, agent, seeds)
    try:
        restored = restored_prompt(
            current[role],
            to,
            seeds.snapshot(agent)[role],
            lambda version: prompt_version(connect(settings.store()), agent, role, version),
        )
    except NoParentVersion as exc:
        raise ActionRefused(str(exc)) from None
    except VersionNotStored as exc:
        raise ActionRefused(str(exc), "--to") from None
    texts, shots = {role: restored.text}, {role: restored.demonstrations}
    memory = restored.memory if role == "student" else None
    versions = next_versions(current, texts, "rollback", shots, memory=memory)
    publish_as_learner(settings, versions)
    return PromptRollback(restored, versions)


def rollback_checkpoint(
    settings: Settings, agent: str, role: str, to: int | None
) -> tuple[int, CheckpointEvent]:
    """Make checkpoint ``to`` (default: the current one's parent) current again as a new
    version, published by the learner; returns the restored version and the new event."""
    from runtime.checkpoints import current_checkpoints
    from runtime.checkpoints import rollback_checkpoint as rolled_back
    from runtime.prompts import NoParentVersion, VersionNotStored
    from store.client import connect
    from store.queries import checkpoint_version

    current = current_checkpoints(settings.kafka_config(), agent, [role], settings.codec())
    try:
        restored, event = rolled_back(
            agent,
            role,
            current.get(role),
            to,
            settings.cache_dir,
            lambda version: checkpoint_version(connect(settings.store()), agent, role, version),
        )
    except (NoParentVersion, VersionNotStored) as exc:
        raise ActionRefused(str(exc)) from None
    publish_as_learner(settings, [event])
    return restored, event


def request_retrain(
    settings: Settings,
    kind: str,
    agent: str,
    since: str,
    length: timedelta,
    budget: int | None,
    params: dict[str, str],
) -> RetrainTrigger:
    """Produce an operator's RetrainTrigger for the agent's traces of the last ``length``
    (``since`` as the operator wrote it), once its budget and params are known to fit the
    job's config (``ActionRefused`` otherwise, and nothing produced)."""
    from runtime.producer import EventProducer
    from schemas.models import RetrainTrigger
    from trainer.calibration import load_calibration_config
    from trainer.gepa_config import load_gepa_config
    from trainer.grpo_config import load_grpo_config

    loaders = {
        "gepa": load_gepa_config,
        "grpo": load_grpo_config,
        "rim": load_calibration_config,
    }
    if kind not in loaders:
        raise ActionRefused(f"no retrain kind {kind[:20]!r}: choose gepa, grpo or rim")
    try:
        loaders[kind](settings.config_dir).with_overrides(budget, params)
    except ValueError as exc:  # pydantic's ValidationError is one too
        raise ActionRefused(str(exc).splitlines()[0], "--param") from None
    now = datetime.now(UTC)
    trigger = RetrainTrigger(
        kind=kind,  # type: ignore[arg-type]
        agent_id=agent,
        reason=f"operator request ({since} of traces)",
        requested_by="operator",
        window_start=now - length,
        window_end=now,
        budget=budget,
        params=params,
    )
    with EventProducer(settings.kafka_config(), codec=settings.codec()) as producer:
        producer.send(trigger)
    return trigger


def label_version(
    settings: Settings,
    agent: str,
    role: str,
    label: str,
    version: int | None,
    share: float,
    remove: bool,
    kind: RolloutKind = "prompt",
) -> str:
    """Put ``label`` on stored prompt version (``kind`` checkpoint: checkpoint) ``version``
    of the agent's ``role`` (a canary takes ``share`` of its tasks under a new rollout id), or
    remove the label (a tombstone); published by the learner. Production is not a label one
    sets, and one canary runs per agent/role at a time. Returns what was done, in words."""
    import re
    import uuid

    from schemas.models import CANARY, LABEL_PATTERN, PRODUCTION
    from schemas.topics import ROLLOUT_EVENTS, topic_of, version_key
    from store.client import connect
    from store.queries import stored_version

    if not re.fullmatch(LABEL_PATTERN, label):
        raise ActionRefused(
            f"{label[:40]!r}: a label is lower case letters, digits, '-' and '_' (at most 32),"
            " starting with a letter",
            "--label",
        )
    moves = (
        "`atlas checkpoints rollback`"
        if kind == "checkpoint"
        else "`atlas prompts set` and `rollback`"
    )
    if label == PRODUCTION:
        raise ActionRefused(f"production is what agents use: it moves with {moves}", "--label")
    labels = version_labels(settings, agent, kind)
    named = "checkpoint " if kind == "checkpoint" else ""  # prompts: the versions by default
    topic = topic_of(ROLLOUT_EVENTS[kind])
    if remove:
        if version is not None:
            raise ActionRefused("--remove takes no --version", "--version")
        if (role, label) not in labels:
            raise ActionRefused(f"{agent}/{role} has no {named or 'version '}labelled {label}")
        publish_as_learner(settings, [], [(topic, version_key(agent, role, label).encode())])
        return f"removed label {label} from {agent}/{role} {named}v{labels[(role, label)].version}"
    if version is None:
        raise ActionRefused("give the --version to label", "--version")
    production = labels.get((role, PRODUCTION))
    # a checkpoint's production may be the base model (version 0); a prompt's seed is no version
    in_production = production.version if production else (0 if kind == "checkpoint" else None)
    if label == CANARY and in_production in (None, version):
        raise ActionRefused(
            f"a canary needs another version in production to be compared with ({agent}/{role}"
            f" runs {'its seed' if in_production is None else f'v{in_production}'})",
            "--version",
        )
    running = labels.get((role, CANARY)) if label == CANARY else None
    if running is not None:
        raise ActionRefused(
            f"{agent}/{role} has a canary already (v{running.version}, rollout"
            f" {running.rollout_id}): one at a time; remove it first with --remove"
        )
    stored = stored_version(connect(settings.store()), ROLLOUT_EVENTS[kind], agent, role, version)
    if stored is None:
        raise ActionRefused(f"no stored {named}version {version} of {agent}/{role}")
    rollout = (
        {"rollout_id": uuid.uuid4().hex, "traffic_share": share}
        if label == CANARY
        else {"rollout_id": None, "traffic_share": None}
    )
    labelled = stored.model_copy(update={"label": label, **rollout})
    publish_as_learner(settings, [labelled.model_validate(labelled.model_dump())])
    what = f" on {share:.1%} of tasks (rollout {rollout['rollout_id']})" if label == CANARY else ""
    return f"labelled {agent}/{role} {named}v{version} {label}{what}"


def version_labels(settings: Settings, agent: str, kind: RolloutKind) -> dict[tuple[str, str], Any]:
    """Every label of the agent's roles on the prompts (or checkpoints) topic now."""
    if kind == "prompt":
        from runtime.prompts import current_labels

        return current_labels(settings.kafka_config(), agent, settings.codec())
    from runtime.checkpoints import checkpoint_labels

    return checkpoint_labels(settings.kafka_config(), agent, settings.codec())
