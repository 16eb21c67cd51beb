"""The configuration of one GEPA job (``GepaConfig``), read from ``configs/gepa.yaml``.

The YAML file holds the deployment's values; a field it leaves out takes the default below. A
trigger may override ``budget`` (``atlas retrain gepa --budget``) and, through its params
(``--param NAME=VALUE``, ``section.name`` for a nested field), any scalar here; an unknown
name or a bad value refuses the trigger before any work starts (``trainer/overrides.py``).

Search
------
``budget`` (default 40)
    Metric calls GEPA may spend; one call is one example run through the agent's loop and
    scored by RIM, training minibatches and validation alike. The held-out gate comes on top
    (``dataset.heldout_size`` calls for production, as many again for a changed candidate).
    Raise it when there is more data or a reflection model worth listening to; the job's
    time grows linearly with it. GEPA checks it between iterations, so it may spend a little
    more.
``minibatch_size`` (default 3)
    Examples per reflective minibatch: how many results the reflection model reads before
    proposing, and how many calls each proposal's acceptance test costs (parent and child).
    Raise it when single examples are noisy; lower it on very small budgets.
``components`` (default ``[student, teacher]``)
    The system prompts GEPA may rewrite. Rewriting needs a reflection model (settings:
    ``reflection_backend``); without one only the demonstrations evolve. In ``auto`` mode only
    the student's prompt can matter, so only it is optimized.
``demonstrations`` (section, ``trainer/demonstrations.py``)
    The student's solved examples as one more component: ``enabled`` (true; false optimizes
    the texts only, a shorter job), ``max_examples`` (3 per set), ``token_budget`` (240, a
    rough cap for a whole set), ``min_reward`` (0.8: an unedited trace qualifies with at least
    this reward). They are drawn from the training split only, never from held-out inputs.
``seed`` (default 0)
    Seeds GEPA's sampling and the demonstration proposer: the same data and seed give the
    same search. Change it to try another search path on the same data.

Reflection
----------
``reflection_max_tokens`` (default 384)
    Length cap of a proposed prompt. Raise it if proposals come back cut off.
``reflection_temperature`` (default 0.7)
    Sampling temperature of the reflection model. Lower it for more conservative proposals.

Measuring candidates
--------------------
``eval_mode`` (default ``paired``)
    The loop mode every candidate, and production at the gate, is measured in. ``auto`` runs
    the student alone (cheapest, and the teacher's prompt has no effect); ``paired`` and
    ``coach`` include the teacher. Measure in the mode the agent serves in.
``eval_batch_size`` (default 8)
    Tasks per batched runtime call. A throughput knob only, results do not depend on it:
    raise it on a GPU or a server with spare capacity, lower it when memory is short.
``limits`` (section, ``runtime/core.py`` ``GenerationLimits``)
    Generation limits while measuring: ``answer_tokens`` 96, ``review_tokens`` 8,
    ``guidance_tokens`` 64, ``plan_tokens`` 64, ``temperature`` 0.0. Keep the temperature at 0
    so that two candidates are compared on deterministic answers, and the answer length at
    least what the task family needs (a cut answer scores as a wrong one).

Data and gate
-------------
``dataset`` (section, ``trainer/datasets.py`` ``DatasetConfig``)
    How stored traces become splits: ``train_size`` 24, ``validation_size`` 12 (GEPA's Pareto
    set), ``heldout_size`` 30 (the gate's examples; more examples, a surer gate, a longer
    job), ``heldout_fraction`` 0.3 and ``validation_fraction`` 0.2 (inputs are assigned by a
    hash of their text: change these rarely, since a changed fraction moves inputs once
    trained on into the held-out set of later jobs), ``builtin_pool`` 200 (built-in tasks
    added per task family seen in the agent's traces; 0 learns from stored traces only),
    ``seed`` 0.
``gate`` (section, ``trainer/evaluation.py`` ``GateConfig``)
    When a candidate may be published: its held-out mean must beat production's by
    ``margin`` (0.01), ``min_non_degradation`` (0.97) of examples must score no worse, and it
    must keep ``min_retention`` (0.9) of the examples production gets right (reward at least
    ``success_reward``, 0.5); differences under ``tolerance`` (1e-6) are ties. Loosen these
    only knowing that what passes goes live in every agent.
``canary_share`` (default 0.1) and ``when_canary_runs`` (default ``replace``)
    A candidate that passed the gate is published as a canary on this share of the agent's
    tasks (``atlas.prompts.v1`` label ``canary``), and `atlas worker rollouts` promotes it or
    rolls it back from live rewards; 0 publishes it straight to production. If a canary of the
    role is running, ``replace`` ends that rollout and starts this one, ``queue`` publishes the
    candidate under the ``queued`` label, which the controller starts once the running one is
    decided (a later candidate replaces a queued one).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from runtime.turns import GenerationLimits
from schemas.configfile import load_config
from schemas.models import Mode
from trainer.datasets import DatasetConfig
from trainer.demonstrations import DEMONSTRATIONS, DemonstrationConfig
from trainer.evaluation import CanaryPublishing, GateConfig
from trainer.overrides import with_params


class GepaConfig(CanaryPublishing):
    """One GEPA job. ``configs/gepa.yaml`` holds the defaults; a trigger may override the
    budget and (through its params) any scalar here. The module docstring documents each
    field."""

    budget: int = Field(40, ge=1, description="Metric calls (one = one example evaluated).")
    minibatch_size: int = Field(3, ge=1, description="Examples per reflective minibatch.")
    eval_mode: Mode = Field(
        "paired", description="The loop mode every candidate is measured in (auto: student only)."
    )
    components: list[str] = Field(
        default_factory=lambda: ["student", "teacher"],
        description="Which system prompts GEPA may rewrite (needs a reflection model).",
    )
    demonstrations: DemonstrationConfig = Field(default_factory=DemonstrationConfig)
    reflection_max_tokens: int = Field(384, ge=16, description="Length of a proposed prompt.")
    reflection_temperature: float = Field(0.7, ge=0)
    eval_batch_size: int = Field(8, ge=1, description="Tasks per batched runtime call.")
    seed: int = 0
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    def optimized_components(
        self, reflection: bool = True, demonstrations: bool = False
    ) -> list[str]:
        """Text components need a reflection model; the demonstrations need a candidate pool."""
        texts = ["student"] if self.eval_mode == "auto" else list(self.components)
        return (texts if reflection else []) + (
            [DEMONSTRATIONS] if demonstrations and self.demonstrations.enabled else []
        )

    def with_overrides(self, budget: int | None, params: Mapping[str, str]) -> GepaConfig:
        """This config with a trigger's budget and params (``name`` or ``section.name``)."""
        return with_params(self, params, "GEPA", "budget", budget)


def load_gepa_config(config_dir: Path) -> GepaConfig:
    """``gepa.yaml`` in ``config_dir``, validated; ConfigError (one line) when it is missing
    or invalid, never silent defaults."""
    return load_config(config_dir / "gepa.yaml", GepaConfig)
