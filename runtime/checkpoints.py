"""Hot-loading published checkpoints into a running agent's local model.

``CheckpointFollower`` follows ``atlas.checkpoints.v1``; ``HotLoadingBackend`` wraps a
``LocalBackend`` and, between calls (so never mid-task), switches to the newest checkpoint
published for its agent and role after checking every file against the card's sha256, and
runs a checkpoint under the canary label beside it for the tasks of the canary's arm.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from runtime.backends.base import (
    BackendError,
    ChatResult,
    GenerationParams,
    Message,
    MixedBackend,
    ModelBackend,
)
from runtime.backends.local import SMOLLM2_NAME, LocalBackend, default_model_dir
from runtime.follow import RoleVersionFollower
from runtime.prompts import NoParentVersion, VersionNotStored
from schemas.codec import AvroCodec
from schemas.models import CANARY, PATH_SAFE, Arm, CheckpointEvent
from schemas.signing import Verifier
from schemas.topics import CHECKPOINTS

log = logging.getLogger(__name__)
CARD = "card.json"  # written beside the weights after they are hashed


class CheckpointFollower(RoleVersionFollower[CheckpointEvent]):
    def __init__(
        self,
        kafka_config: dict[str, str],
        codec: AvroCodec | None = None,
        verifier: Verifier | None = None,
    ):
        super().__init__(kafka_config, CHECKPOINTS, CheckpointEvent, codec, verifier)


def current_checkpoints(
    kafka_config: dict[str, str],
    agent_id: str,
    roles: Iterable[str],
    codec: AvroCodec | None = None,
) -> dict[str, CheckpointEvent]:
    """The checkpoint each of the agent's ``roles`` runs now (roles on their base model left
    out), from one replay of the checkpoints topic, whatever the number of roles."""
    with CheckpointFollower(kafka_config, codec=codec).start() as follower:
        found = {role: follower.latest(agent_id, role) for role in set(roles)}
    return {role: event for role, event in found.items() if event is not None}


def checkpoint_labels(
    kafka_config: dict[str, str], agent_id: str, codec: AvroCodec | None = None
) -> dict[tuple[str, str], CheckpointEvent]:
    """Every label of the agent's roles on the checkpoints topic now: (role, label) -> event."""
    with CheckpointFollower(kafka_config, codec=codec).start() as follower:
        return follower.labels(agent_id)


class CheckpointRollback(NamedTuple):
    restored: int  # the version whose weights serve again
    event: CheckpointEvent  # the new version that publishes them


def rollback_checkpoint(
    agent_id: str,
    role: str,
    current: CheckpointEvent | None,
    to: int | None,
    cache_dir: Path,
    stored: Callable[[int], CheckpointEvent | None],
) -> CheckpointRollback:
    """The event that makes an earlier checkpoint current again: a new version, child of
    ``current``, serving the weights of version ``to`` (by default the current one's parent).
    Version 0 is the base model (in ``cache_dir``, converted there on first use); any other
    comes from ``stored`` (called only then). Raises ``NoParentVersion`` (nothing published,
    or no parent) or ``VersionNotStored``, with a message an operator can read."""
    if current is None:
        raise NoParentVersion(f"{agent_id}/{role} runs its base model: nothing to roll back")
    target = current.parent_version if to is None else to
    if target is None:
        raise NoParentVersion(f"{agent_id}/{role} v{current.version} has no parent")
    if target == 0:
        uri, sha, base = f"file://{default_model_dir(cache_dir)}", {}, SMOLLM2_NAME
    else:
        found = stored(target)
        if found is None:
            raise VersionNotStored(f"no stored checkpoint v{target} of {agent_id}/{role}")
        uri, sha, base = found.uri, found.sha256, found.base_model
    event = CheckpointEvent(
        agent_id=agent_id,
        role=role,
        version=current.version + 1,
        parent_version=current.version,
        uri=uri,
        base_model=base,
        sha256=sha,
        source="rollback",
    )
    return CheckpointRollback(target, event)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(checkpoint: CheckpointEvent) -> Path:
    """The checkpoint's folder, after checking that the event lists every file in it (the card
    aside) with its sha256, that each matches, and that the weights are safetensors."""
    folder = Path(checkpoint.uri.removeprefix("file://"))
    listed = set(checkpoint.sha256)
    if not any(name.endswith(".safetensors") for name in listed):
        raise BackendError(
            f"checkpoint v{checkpoint.version}: lists no .safetensors weights with a sha256"
        )
    present = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    unlisted = sorted(present - listed - {CARD})
    if unlisted:
        raise BackendError(
            f"checkpoint v{checkpoint.version}: {', '.join(unlisted)} in {folder} not hashed"
        )
    for name in listed:
        if not PATH_SAFE.fullmatch(name):
            raise BackendError(f"checkpoint v{checkpoint.version}: bad file name {name[:80]!r}")
    for name, expected in checkpoint.sha256.items():
        path = folder / name
        if not path.exists():
            raise BackendError(f"checkpoint v{checkpoint.version}: {path} is missing")
        if sha256_of(path) != expected:
            raise BackendError(f"checkpoint v{checkpoint.version}: {path} fails its sha256")
    return folder


class HotLoadingBackend(MixedBackend):
    """A local backend that follows its agent/role's published checkpoints. Calls go to the
    wrapped backend as they are (``complete_each`` whole, so judging through this one keeps
    its batching); the wrapped backend's lock lets a generate call finish before a swap.

    A checkpoint under the ``canary`` label is loaded beside production into a second model
    (``load_canary``: a folder -> a backend), so the runtime can run each task on its arm
    (:meth:`rollout`, :meth:`on_arm`); when the canary is promoted, that model becomes
    production without loading it again, and when its label goes, it is dropped."""

    def __init__(
        self,
        backend: LocalBackend,
        follower: CheckpointFollower,
        agent_id: str,
        role: str,
        load_canary: Callable[[Path], LocalBackend] | None = None,
    ):
        self.backend = backend
        self.follower = follower
        self.agent_id = agent_id
        self.role = role
        self.version: int | None = None
        self.base_name = backend.model_name
        self.load_canary = load_canary
        self.canary: CheckpointEvent | None = None
        self.canary_backend: LocalBackend | None = None
        self._refused: str | None = None  # a canary's rollout that failed to load: not retried

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    def production(self) -> CheckpointEvent:
        """The checkpoint production runs: the latest published, or version 0, the base."""
        latest = self.follower.latest(self.agent_id, self.role)
        if latest is not None and latest.version == self.version:
            return latest
        return CheckpointEvent(
            agent_id=self.agent_id, role=self.role, version=self.version or 0,
            uri=f"file://{self.backend.model_dir}", base_model=self.base_name, source="manual",
        )  # fmt: skip

    def between_tasks(self) -> None:
        """Called by the runtime before each batch of tasks: switch if a newer one exists,
        and follow the role's canary."""
        latest = self.follower.latest(self.agent_id, self.role)
        if latest is not None and latest.version != self.version:
            self._switch(latest)
        if self.load_canary is not None:
            self._follow_canary(self.follower.labelled(self.agent_id, CANARY).get(self.role))

    def _switch(self, latest: CheckpointEvent) -> None:
        if (
            self.canary is not None
            and self.canary_backend
            and self.canary.version == latest.version
        ):
            self.backend, self.canary, self.canary_backend = self.canary_backend, None, None
        else:
            try:
                self.backend.load(verify(latest))
            except (BackendError, OSError, ValueError) as exc:  # from_pretrained raises these
                log.error("not switching to checkpoint v%d: %s", latest.version, exc)
                self.version = latest.version  # do not retry a broken checkpoint on every call
                return
        self.version = latest.version
        self.backend.model_name = f"{self.base_name}@v{latest.version}"
        log.info("%s/%s now runs checkpoint v%d", self.agent_id, self.role, latest.version)

    def _follow_canary(self, wanted: CheckpointEvent | None) -> None:
        if wanted is None or wanted.rollout_id is None or wanted.version == self.version:
            # ended, or promoted (production runs it: its label's removal is on its way)
            self.canary = self.canary_backend = None  # its memory is freed
            return
        if self.canary is not None and self.canary.rollout_id == wanted.rollout_id:
            return
        if self._refused == wanted.rollout_id:
            return
        assert self.load_canary is not None
        try:
            loaded = self.load_canary(verify(wanted))
        except (BackendError, OSError, ValueError) as exc:
            log.error("not running canary checkpoint v%d: %s", wanted.version, exc)
            self._refused, self.canary, self.canary_backend = wanted.rollout_id, None, None
            return
        loaded.model_name = f"{self.base_name}@v{wanted.version}"
        self.canary, self.canary_backend = wanted, loaded
        log.info("%s/%s runs canary checkpoint v%d", self.agent_id, self.role, wanted.version)

    def rollout(self) -> tuple[CheckpointEvent, CheckpointEvent] | None:
        """(production, canary) while a canary checkpoint is loaded, else None."""
        if self.canary is None or self.canary_backend is None:
            return None
        return self.production(), self.canary

    def on_arm(self, arm: Arm) -> ModelBackend:
        """The model of ``arm``: the canary's while one is loaded, else production's."""
        if arm == "canary" and self.canary_backend is not None:
            return self.canary_backend
        return self.backend

    def complete_each(
        self, conversations: Sequence[Sequence[Message]], params: Sequence[GenerationParams]
    ) -> list[ChatResult]:
        return self.backend.complete_each(conversations, params)
