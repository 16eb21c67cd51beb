"""The GRPO child process: ``python -m trainer.grpo_run SPEC.json`` (under the deepspeed
launcher). Reads everything from the spec, prints one JSON line per step and a final one,
and saves the trained model; the GRPO worker streams those lines into job reports."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel

from rim.config import build_rim, load_rim_config
from runtime.tasks import Task
from trainer.grpo import GrpoTrainer, RolloutScorer, read_deepspeed_config
from trainer.grpo_config import GrpoConfig


class GrpoSpec(BaseModel):
    config: GrpoConfig
    config_dir: Path
    model_dir: Path
    student_dir: Path | None = None
    output_dir: Path
    prompts: dict[str, str]
    examples: list[dict[str, str | None]]


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


def main(spec_path: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = GrpoSpec.model_validate_json(Path(spec_path).read_text())
    rim_config = load_rim_config(spec.config_dir)
    if rim_config.needs_models:
        raise SystemExit(
            "GRPO rewards use RIM's programmatic judges and stored human feedback; switch the"
            " LLM judges off in rim.yaml for training, or score with them at the gate"
        )
    student = None
    if spec.config.role == "teacher":
        from runtime.backends.local import LocalBackend

        student = LocalBackend(spec.student_dir or spec.model_dir, max_batch=16)
    scorer = RolloutScorer(
        spec.config.role,
        build_rim(rim_config),
        spec.prompts,
        student,
        spec.config.student_answer_tokens,
    )
    tasks = [Task(**example) for example in spec.examples]  # type: ignore[arg-type]
    trainer = GrpoTrainer(
        spec.config,
        spec.model_dir,
        scorer,
        tasks,
        read_deepspeed_config(spec.config_dir, spec.config),
    )
    emit({"event": "start", "zero_stage": trainer.zero_stage, "examples": len(tasks)})
    trainer.train(lambda m: emit({"event": "step", **m.as_dict()}))
    trainer.save(spec.output_dir)
    emit({"event": "done", "output_dir": str(spec.output_dir), "zero_stage": trainer.zero_stage})


if __name__ == "__main__":
    main(sys.argv[-1])
