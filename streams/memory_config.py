"""The memory processor's settings (``configs/memory.yaml``), with documented defaults.

Read by the reward worker, which runs the memory processor (``streams/memory.py``) beside the
reward processor; a missing or invalid file is a one-line ConfigError, never silent defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from schemas.configfile import load_config


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, description="Off: the reward worker keeps no memory.")
    role: str = Field(
        "student",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The role whose answers entries teach (no '/': it is part of the key).",
    )
    min_reward: float = Field(
        0.8, ge=0, le=1, description="An approved answer is remembered with at least this reward."
    )
    max_entries: int = Field(
        200, ge=1, description="Entries per agent/role; past it the least useful is evicted."
    )
    max_input_chars: int = Field(
        2000, ge=1, description="Longer inputs make no entry (a retrieved entry costs tokens)."
    )
    max_output_chars: int = Field(2000, ge=1, description="Longer outputs make no entry.")
    max_terms: int = Field(64, ge=1, description="Retrieval terms kept per entry.")
    holdout: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of its matching tasks each entry is held back from at random (agents"
        " read this; a hash of trace and entry ids): the tasks retirement compares it with."
        " 0 turns retirement off.",
    )
    retire_min_uses: int = Field(
        10,
        ge=1,
        description="An entry is judged only once it was used this often and held back this often.",
    )
    retire_alpha: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Error level of the always-valid test (streams/rollout_stats.py): an entry"
        " that does not lower the reward is retired with probability at most this, however"
        " often it is checked.",
    )
    retire_margin: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Retired once shown to lower the mean reward of its matching tasks by more"
        " than this (held back minus used).",
    )
    retire_tuned_uses: int = Field(
        50,
        ge=1,
        description="Uses at which the test's boundary is tightest; any value keeps alpha.",
    )


def load_memory_config(config_dir: Path) -> MemoryConfig:
    """``memory.yaml`` in ``config_dir``, validated; ConfigError (one line) when it is missing
    or invalid."""
    return load_config(config_dir / "memory.yaml", MemoryConfig)
