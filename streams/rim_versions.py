"""The RIM configuration the reward stream scores each agent's traces with.

Calibrations are published as versions of the agent's ``rim`` role on the compacted
``atlas.prompts.v1`` (``consumers/rim_worker.py``), not on a topic of their own: a RIM version is
the same kind of thing as a prompt version (numbered, parented, signed by the learner, rolled
back with `atlas prompts rollback --role rim`, stored in ``prompt_versions`` with its lineage by
the sink), so it reuses that machinery whole. Agents never see it: their snapshots hold only
the roles they have seeds for (student, teacher).

:class:`RimVersions` follows the topic (with the learner's signature checked when a verifier is
given: an unsigned or forged version is refused and the current one kept), parses each rim
version once, and remembers every version it has read, so a replay pinned to a version
(`atlas replay --rim-version N`) is scored with it while the topic still holds it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from rim.calibration import CONFIGURED, RIM_ROLE, Calibration, RimVersion
from runtime.follow import RoleVersionFollower
from schemas.codec import AvroCodec
from schemas.models import PromptVersion
from schemas.signing import Verifier
from schemas.topics import PROMPTS

log = logging.getLogger(__name__)


class RimVersionSource(Protocol):
    def current(self, agent_id: str) -> RimVersion:
        """The version the agent's traces are scored with now."""
        ...

    def version(self, agent_id: str, version: int) -> RimVersion | None:
        """Version ``version`` of the agent's RIM (0: the configured one); None if unknown."""
        ...


class ConfiguredRim:
    """Every agent on ``configs/rim.yaml`` (version 0): no calibration is followed."""

    def current(self, agent_id: str) -> RimVersion:
        return CONFIGURED

    def version(self, agent_id: str, version: int) -> RimVersion | None:
        return CONFIGURED if version == 0 else None


class RimVersions(RoleVersionFollower[PromptVersion]):
    """Follows the ``rim`` role of every agent on the prompts topic; thread-safe reads. A
    version whose text is not a calibration is logged and counted in ``invalid``, and the
    agent stays on the last valid one (or version 0)."""

    def __init__(
        self,
        kafka_config: dict[str, str],
        codec: AvroCodec | None = None,
        verifier: Verifier | None = None,
    ):
        super().__init__(kafka_config, PROMPTS, PromptVersion, codec, verifier)
        self._known: dict[tuple[str, int], RimVersion] = {}
        self._valid: dict[str, RimVersion] = {}
        self.invalid = 0

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        super()._apply(key, value)
        text = (key or b"").decode(errors="replace")
        if value is None or not text.endswith(f"/{RIM_ROLE}"):
            return
        agent_id = text[: -len(RIM_ROLE) - 1]
        published = self.latest(agent_id, RIM_ROLE)
        if published is None or (agent_id, published.version) in self._known:
            return
        try:
            parsed = RimVersion(published.version, Calibration.from_text(published.text))
        except ValueError as exc:
            self.invalid += 1
            log.error("agent %s rim v%d ignored: %s", agent_id, published.version, exc)
            return
        with self._lock:
            self._known[(agent_id, published.version)] = parsed
            self._valid[agent_id] = parsed
        log.info("agent %s: scoring with rim v%d", agent_id, published.version)

    def current(self, agent_id: str) -> RimVersion:
        with self._lock:
            return self._valid.get(agent_id, CONFIGURED)

    def version(self, agent_id: str, version: int) -> RimVersion | None:
        if version == 0:
            return CONFIGURED
        with self._lock:
            return self._known.get((agent_id, version))
