"""The configuration of one GRPO job (``GrpoConfig``), read from ``configs/grpo.yaml``.

The YAML file holds the deployment's values; a field it leaves out takes the default below
(where the project's ``configs/grpo.yaml`` differs, both are given). A trigger's budget
(``atlas retrain grpo --budget``) sets ``steps``; its params (``--param NAME=VALUE``,
``section.name`` for a nested field) may override any scalar here; an unknown name or a bad
value refuses the trigger before any work starts (``trainer/overrides.py``). The whole config
travels to the trainer process in its spec file and is written into the published checkpoint's
card.

What is trained
---------------
``role`` (default ``teacher``)
    The model trained: ``teacher`` (as in ATLAS: its hints are rewarded by the frozen
    student's retry) or ``student`` (its answers are rewarded directly). Train the role whose
    mistakes the traces show.
``steps`` (default 20)
    Optimizer steps; the job's length grows linearly with it. A trigger's budget overrides it.
``prompts_per_step`` (default 2)
    Training examples sampled per step. More examples, a steadier gradient, a slower step.
``group_size`` (default 4, at least 2)
    Completions sampled per example. Advantages are relative within a group, so a group whose
    rewards are all equal teaches nothing (the ``zero_variance_groups`` figure of each step):
    raise it when that figure stays high.
``seed`` (default 0)
    Seeds the choice of examples and torch's sampling. Change it to try another run on the
    same data.

Sampling
--------
``max_prompt_tokens`` (default 256)
    Longer prompts are cut from the left. Raise it for long tasks, at the cost of memory.
``max_completion_tokens`` (default 48)
    Tokens sampled per completion. Too short and the format reward is never earned
    (CALIBRATION.md); longer costs time on every step.
``temperature`` (default 1.0)
    Sampling temperature of the rollouts. Lower it when completions are gibberish, raise it
    when every group comes out the same.
``student_answer_tokens`` (default 64)
    Length of the frozen student's first answers and retries when training the teacher
    (unused when ``role`` is ``student``).

Optimization
------------
``learning_rate`` (default 1e-6)
    AdamW's learning rate. Small on purpose: 5e-5 collapsed SmolLM2 on arithmetic
    (CALIBRATION.md). The gate refuses a model made worse, but the job's time is lost: raise
    it in small steps.
``weight_decay`` (default 0.0)
    AdamW's weight decay.
``beta`` (default 0.04)
    Weight of the per-token KL penalty to the starting model. Raise it when the policy drifts
    (the ``kl`` figure grows) and held-out results drop; 0 trains without the anchor.
``epsilon`` (default 0.2)
    PPO-style clipping of the probability ratio.
``deepspeed_config`` (default ``deepspeed/zero2_cpu.json``)
    The DeepSpeed JSON (ZeRO stage, offload, precision), relative to the config folder. Use
    ``deepspeed/zero3_offload.json`` on GPUs (bf16, parameters partitioned).

The held-out gate
-----------------
``eval_mode`` (default ``paired``; ``auto``, ``paired`` or ``coach``)
    The loop mode the current and the trained model are measured in. A trained teacher only
    shows in ``paired`` or ``coach``; ``auto`` suits a trained student and is cheaper.
``eval_answer_tokens`` (default 64)
    Answer length in the gate's runs; at least what the task family needs.
``dataset`` (section, ``trainer/datasets.py`` ``DatasetConfig``)
    How stored traces become splits: ``train_size`` (24; configs/grpo.yaml: 64) examples to
    train on, ``validation_size`` (12; configs/grpo.yaml: 1, GRPO does not use it),
    ``heldout_size`` 30 (the gate's examples), ``heldout_fraction`` 0.3 and
    ``validation_fraction`` 0.2 (inputs are assigned by a hash of their text: change these
    rarely, since a changed fraction moves inputs once trained on into later held-out sets),
    ``builtin_pool`` 200 (built-in tasks added per task family seen in the agent's traces),
    ``seed`` 0.
``gate`` (section, ``trainer/evaluation.py`` ``GateConfig``)
    When a checkpoint may be published. Defaults as in every gate except ``margin`` 0: a
    checkpoint need not beat production on average, only not be worse; ``min_non_degradation``
    0.97 of examples no worse, ``min_retention`` 0.9 of what production gets right (reward at
    least ``success_reward`` 0.5) kept right, differences under ``tolerance`` 1e-6 are ties.
``canary_share`` (default 0.1) and ``when_canary_runs`` (default ``replace``)
    A checkpoint that passed the gate is published as a canary on this share of the agent's
    tasks (``atlas.checkpoints.v1`` label ``canary``): agents that follow checkpoints load it
    beside production, and `atlas worker rollouts` promotes it or rolls it back from live
    rewards; 0 publishes it straight to production. ``replace`` or ``queue`` a running canary
    of the role, as for GEPA.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from schemas.configfile import load_config
from trainer.datasets import DatasetConfig
from trainer.evaluation import CanaryPublishing, GateConfig
from trainer.overrides import with_params


class GrpoConfig(CanaryPublishing):
    """One GRPO job; ``configs/grpo.yaml`` holds the defaults, a trigger's params override.
    The module docstring documents each field."""

    role: Literal["teacher", "student"] = Field("teacher", description="Which model to train.")
    steps: int = Field(20, ge=1, description="Optimizer steps (a trigger's budget overrides).")
    prompts_per_step: int = Field(2, ge=1, description="Training examples per step.")
    group_size: int = Field(4, ge=2, description="Completions sampled per prompt.")
    max_prompt_tokens: int = Field(256, ge=16, description="Longer prompts are cut from the left.")
    max_completion_tokens: int = Field(48, ge=1, description="Sampled tokens per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    learning_rate: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    beta: float = Field(0.04, ge=0, description="Weight of the KL penalty to the start model.")
    epsilon: float = Field(0.2, gt=0, description="PPO-style ratio clipping.")
    seed: int = 0
    deepspeed_config: str = Field(
        "deepspeed/zero2_cpu.json", description="ZeRO stage and offload, relative to configs/."
    )
    student_answer_tokens: int = Field(64, ge=1, description="Student turns in teacher rollouts.")
    eval_mode: Literal["auto", "paired", "coach"] = Field(
        "paired", description="Loop mode of the held-out gate (auto cannot see a teacher)."
    )
    eval_answer_tokens: int = Field(64, ge=1, description="Answer length in the gate's runs.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    gate: GateConfig = Field(
        default_factory=lambda: GateConfig(margin=0.0),
        description="A checkpoint must not be worse on average (margin 0) nor per example.",
    )

    def with_overrides(self, budget: int | None, params: Mapping[str, str]) -> GrpoConfig:
        """This config with a trigger's budget (steps) and params (``name`` or ``section.name``)."""
        return with_params(self, params, "GRPO", "steps", budget)


def load_grpo_config(config_dir: Path) -> GrpoConfig:
    """``grpo.yaml`` in ``config_dir``, validated; ConfigError (one line) when it is missing
    or invalid, never silent defaults."""
    return load_config(config_dir / "grpo.yaml", GrpoConfig)
