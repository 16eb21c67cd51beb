"""The learning curve (issue 16, item 4): does the student get better along a stream of tasks
as users correct it, with no learning, with GEPA's demonstrations, with the memory, or both?

Per family (arithmetic, two_step, extraction), SmolLM2-135M in process, ``--streams``
independent streams of ``--stream-length`` training tasks (distinct seeds), mode ``auto``
(student alone), in batches of ``--batch``. After each batch simulated users
(``atlas/simulation.py``, noise 0.1 as in the demo) approve, edit to the reference, or are
careless; each verdict is scored by RIM (programmatic judges) into a ScoredTrace. An edit made
in one batch is available from the next batch on: that is this benchmark's stand-in for
"within seconds" (the memory stream publishes an entry a moment after the feedback). Same
task streams and user seeds for every condition:

1. none: no learning;
2. gepa: after ``--trigger`` tasks, GEPA (``trainer.gepa_engine``, demonstrations from the
   feedback so far, no reflection model, budget ``--gepa-budget``) picks demonstrations; the
   stream uses them from then on (fixed set; ``--gepa-gate``: only if its gate passed);
3. memory: every verdict goes through the memory processor (``streams/memory.py``, settings of
   ``configs/memory.yaml``; uses counted for retirement as ``streams/memory_retirement.py``)
   into a ``MemoryIndex`` that the runtime searches (the default policy turned on: k=3,
   512 tokens);
4. both: gepa's demonstrations plus the memory.

Accuracy per window of ``--window`` tasks, per family and pooled, with n per cell, and the
lift over "none" in points. Then "one edit": one edited task as the only memory entry, and
accuracy on the next tasks like it (same family; same template for extraction) vs unlike it
(other families), with and without the memory.

    .venv/bin/python benchmarks/memory.py [--families arithmetic,two_step,extraction]
        [--streams 3] [--stream-length 80] [--trigger 40] [--gepa-budget 20]
        [--answer-tokens 48] [--one-edit-tasks 3] [--one-edit-n 20] [--skip-one-edit]

Caveats: with n = 60 one item is 1.7 points; a lift under 10 points is noise
(CALIBRATION.md), and the table says so per cell rather than claiming it. Greedy decoding:
the streams are deterministic, so gepa reuses none's answers before the trigger and both
reuses memory's (same inputs, same prompts, same batches). A ScoredTrace here is revision 1
scored with its feedback at once (the stream scores revision 1 on arrival and revision 2 when
the feedback comes); the memory decisions depend only on the verdict and the reward, which are
the same. Answers are cut at ``--answer-tokens`` (48, for time on 2 cores): a long baseline
answer may lose its final number, which favours conditions that teach bare answers. GEPA's
pick is used whether or not its gate (small held-out set) would have published it, unless
``--gepa-gate``; both uses the demonstrations GEPA picked from none's feedback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atlas.settings import PROJECT_CONFIGS, Settings
from atlas.simulation import SimulatedUser
from benchmarks.learning import SEEDS
from benchmarks.memory_loop import AGENT, MemoryLoop, template_of
from rim.config import build_rim, load_rim_config
from rim.reward import Rim
from runtime.backends.local import LocalBackend, default_model_dir
from runtime.core import Runtime
from runtime.memory import MemoryPolicy, MemorySearch
from runtime.prompts import StaticPrompts
from runtime.tasks import FAMILIES, Task, generate, is_correct
from runtime.turns import GenerationLimits
from schemas.models import Demonstration, FeedbackEvent, InteractionEvent, ScoredTrace
from store.queries import TrainingTrace
from streams.memory_config import MemoryConfig, load_memory_config
from streams.processor import scored_trace
from trainer.datasets import DatasetConfig, build_splits
from trainer.demonstrations import DEMONSTRATIONS, decode
from trainer.evaluation import PromptEvaluator
from trainer.gepa_config import GepaConfig
from trainer.gepa_engine import evolve_prompts

CONDITIONS = ("none", "gepa", "memory", "both")


def extra(verdict: tuple[str, str | None]) -> dict[str, str | None]:
    """A simulated user's feedback fields besides the trace and the kind."""
    return {"agent_id": AGENT, "edited_text": verdict[1], "user_id": "simulated"}


@dataclass
class Run:
    """One condition on one stream: the events, each task's feedback and scored trace."""

    events: list[InteractionEvent] = field(default_factory=list)
    feedback: list[list[FeedbackEvent]] = field(default_factory=list)
    scored: list[ScoredTrace] = field(default_factory=list)
    memory: MemoryLoop | None = None


@dataclass
class Bench:
    backend: LocalBackend
    rim: Rim
    limits: GenerationLimits
    memory_config: MemoryConfig
    args: argparse.Namespace

    def runtime(self, demonstrations: list[Demonstration], memory: MemorySearch | None) -> Runtime:
        prompts = StaticPrompts(SEEDS, {"student": demonstrations})
        policy = MemoryPolicy(enabled=True) if memory is not None else None
        return Runtime(
            AGENT, self.backend, self.backend, prompts, None, self.limits, memory, policy
        )

    def stream(
        self,
        tasks: list[Task],
        user_seed: int,
        with_memory: bool,
        demos_after_trigger: list[Demonstration] | None = None,
        cached: list[InteractionEvent] | None = None,
    ) -> Run:
        """Answer ``tasks`` batch by batch, each batch's feedback learned before the next;
        answers in ``cached`` are taken instead of generated (the same prefix of a
        deterministic stream under another condition)."""
        user = SimulatedUser(self.args.noise, user_seed)
        run = Run(memory=MemoryLoop(self.memory_config) if with_memory else None)
        memory = run.memory.index if run.memory is not None else None
        for start in range(0, len(tasks), self.args.batch):
            chunk = tasks[start : start + self.args.batch]
            if cached is not None and start + len(chunk) <= len(cached):
                events = cached[start : start + len(chunk)]
            else:
                later = demos_after_trigger is not None and start >= self.args.trigger
                demos = demos_after_trigger if later and demos_after_trigger else []
                events = self.runtime(demos, memory).run_many(chunk, "auto")
            verdicts = [user.verdict(t, e.final_answer) for t, e in zip(chunk, events, strict=True)]
            feedback = [
                [] if v is None else [FeedbackEvent(trace_id=e.trace_id, kind=v[0], **extra(v))]
                for e, v in zip(events, verdicts, strict=True)
            ]
            rewards = self.rim.score_many(events, feedback)
            for event, events_feedback, reward in zip(events, feedback, rewards, strict=True):
                trace = scored_trace(event, reward, 1, len(events_feedback))
                if run.memory is not None:
                    run.memory.learn(trace, events_feedback)
                run.scored.append(trace)
            run.events += events
            run.feedback += feedback
        return run

    def gepa(self, family: str, tasks: list[Task], run: Run) -> tuple[list[Demonstration], str]:
        """GEPA's demonstrations from the stream's first ``--trigger`` traces and their
        feedback (edited first, as the store orders them), and its gate's verdict."""
        traces = []
        for task, trace, feedback in zip(tasks, run.scored, run.feedback, strict=False):
            edits = [f.edited_text for f in feedback if f.kind == "edit"]
            traces.append(
                TrainingTrace(
                    trace.trace_id,
                    task.task_id,
                    family,
                    task.input,
                    task.reference,
                    trace.interaction.final_answer,
                    trace.reward,
                    trace.human_score,
                    edits[-1] if edits else None,
                    "",
                )
            )
        traces = sorted(traces[: self.args.trigger], key=lambda t: t.edited_text is None)
        config = GepaConfig(
            budget=self.args.gepa_budget,
            minibatch_size=4,
            eval_mode="auto",
            limits=self.limits,
            dataset=DatasetConfig(
                train_size=32, validation_size=8, heldout_size=self.args.gepa_heldout
            ),
        )
        splits = build_splits(traces, config.dataset)
        evaluator = PromptEvaluator(
            AGENT, self.backend, self.backend, self.rim, "auto", self.limits
        )
        outcome = evolve_prompts(SEEDS, splits, evaluator, None, config)
        d = outcome.decision
        demos = decode(outcome.best.get(DEMONSTRATIONS, "[]"))
        gate = (
            f"{len(demos)} demos, gate {'passed' if d.passed else 'refused'}"
            f" ({d.current_reward:.3f} -> {d.candidate_reward:.3f}, n={d.n})"
        )
        if self.args.gepa_gate and not d.passed:
            demos = []
        return demos, gate


def correct(tasks: list[Task], run: Run) -> list[bool]:
    return [is_correct(t, e.final_answer) for t, e in zip(tasks, run.events, strict=True)]


def cell(hits: list[bool]) -> str:
    return f"{sum(hits) / len(hits):.3f} (n={len(hits)})" if hits else "-"


MIN_CLAIM_N = 60  # fewer items per cell than this and no lift is claimed (CALIBRATION.md)


def lift(hits: list[bool], base: list[bool]) -> str:
    """The lift in points, and whether it may be claimed: >= 10 points on n >= 60 a side."""
    if not hits or not base:
        return "- | -"
    points = 100 * (sum(hits) / len(hits) - sum(base) / len(base))
    if min(len(hits), len(base)) < MIN_CLAIM_N:
        return f"{points:+.1f} | n<{MIN_CLAIM_N}"
    return f"{points:+.1f} | {'yes' if points >= 10 else 'no'}"


def curve_table(
    title: str, results: dict[str, list[list[bool]]], window: int, conditions: list[str]
) -> None:
    """``results``: condition -> one list of per-task hits per stream."""
    others = [c for c in conditions if c != "none"]
    print(f"\n{title}")
    header = "| tasks | " + " | ".join(conditions)
    header += "".join(f" | {c}-none pts | lift (≥10 pts?)" for c in others)
    print(header + " |")
    print("|" + "---|" * (1 + len(conditions) + 2 * len(others)))
    length = max(len(s) for streams in results.values() for s in streams)
    for start in range(0, length, window):
        hits = {c: [h for s in results[c] for h in s[start : start + window]] for c in conditions}
        row = f"| {start + 1}-{start + window} | " + " | ".join(cell(hits[c]) for c in conditions)
        row += "".join(f" | {lift(hits[c], hits['none'])}" for c in others)
        print(row + " |")


def learning_curve(bench: Bench, families: list[str]) -> None:
    args = bench.args
    conditions = [c for c in CONDITIONS if c in args.conditions.split(",")]
    seconds: Counter[str] = Counter()
    hits: dict[str, dict[str, list[list[bool]]]] = defaultdict(lambda: defaultdict(list))
    for family in families:
        for s in range(args.streams):
            tasks = generate(family, "train", args.stream_length, seed=100 + s)  # type: ignore[arg-type]
            runs: dict[str, Run] = {}
            started = time.perf_counter()
            runs["none"] = bench.stream(tasks, 7 + s, with_memory=False)
            seconds["none"] += time.perf_counter() - started
            demos: list[Demonstration] = []
            if "gepa" in conditions or "both" in conditions:
                started = time.perf_counter()
                demos, gate = bench.gepa(family, tasks, runs["none"])
                seconds["gepa (search)"] += time.perf_counter() - started
                print(f"  {family} stream {s}: GEPA {gate}", flush=True)
            if "gepa" in conditions:
                started = time.perf_counter()
                runs["gepa"] = bench.stream(
                    tasks, 7 + s, False, demos, runs["none"].events[: args.trigger]
                )
                seconds["gepa"] += time.perf_counter() - started
            if "memory" in conditions or "both" in conditions:
                started = time.perf_counter()
                runs["memory"] = bench.stream(tasks, 7 + s, with_memory=True)
                seconds["memory"] += time.perf_counter() - started
                loop = runs["memory"].memory
                assert loop is not None
                print(
                    f"  {family} stream {s}: memory {len(loop.index)} entries,"
                    f" lookups {loop.index.stats.summary()}; decisions {dict(loop.reasons)}",
                    flush=True,
                )
            if "both" in conditions:
                started = time.perf_counter()
                runs["both"] = bench.stream(
                    tasks, 7 + s, True, demos, runs["memory"].events[: args.trigger]
                )
                seconds["both"] += time.perf_counter() - started
            for condition in conditions:
                hits[family][condition].append(correct(tasks, runs[condition]))
            summary = {c: f"{sum(hits[family][c][-1]) / len(tasks):.3f}" for c in conditions}
            print(f"  {family} stream {s} accuracy: {summary}", flush=True)
    for family in families:
        curve_table(f"{family}: accuracy per window", hits[family], args.window, conditions)
    pooled = {c: [h for f in families for h in hits[f][c]] for c in conditions}
    curve_table("pooled over families", pooled, args.window, conditions)
    print("\nseconds per condition: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


def one_edit(bench: Bench, families: list[str]) -> None:
    """One edited task as the only entry; the next tasks like it vs unlike it."""
    args = bench.args
    n, rows = args.one_edit_n, []
    started = time.perf_counter()
    for family in families:
        cells: dict[tuple[str, str], list[bool]] = defaultdict(list)
        recalled: Counter[str] = Counter()
        for i in range(args.one_edit_tasks):
            edited = generate(family, "train", 1, seed=5000 + i)[0]  # type: ignore[arg-type]
            pool = generate(family, "train", 20 * n, seed=6000 + i)  # type: ignore[arg-type]
            groups = {"like": [t for t in pool if template_of(t) == template_of(edited)][:n]}
            others = [f for f in FAMILIES if f != family]
            groups["unlike"] = [
                t
                for j, other in enumerate(others)
                for t in generate(other, "train", n, seed=7000 + i)[j :: len(others)]  # type: ignore[arg-type]
            ][:n]
            loop = MemoryLoop(bench.memory_config)
            loop.teach(edited)
            for group, tasks in groups.items():
                for memory in (None, loop.index):
                    runtime = bench.runtime([], memory)
                    events = [
                        e
                        for start in range(0, len(tasks), args.batch)
                        for e in runtime.run_many(tasks[start : start + args.batch], "auto")
                    ]
                    label = "without" if memory is None else "with"
                    cells[(group, label)] += [
                        is_correct(t, e.final_answer) for t, e in zip(tasks, events, strict=True)
                    ]
                    if memory is not None:
                        recalled[group] += sum(bool(e.memory_entries) for e in events)
        rows.append((family, cells, recalled))
    print(f"\none edit ({args.one_edit_tasks} edited tasks per family, {n} tasks per group each)")
    print(
        "| edited family | tasks | without memory | with memory | pts | lift (≥10 pts?) |"
        " entry shown |"
    )
    print("|---|---|---|---|---|---|---|")
    for family, cells, recalled in rows:
        for group in ("like", "unlike"):
            without, with_ = cells[(group, "without")], cells[(group, "with")]
            print(
                f"| {family} | {group} | {cell(without)} | {cell(with_)} | {lift(with_, without)}"
                f" | {recalled[group]}/{len(with_)} |"
            )
    print(f"one edit: {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--streams", type=int, default=3, help="independent streams per family")
    parser.add_argument("--stream-length", type=int, default=80)
    parser.add_argument("--batch", type=int, default=8, help="feedback applies from the next")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--trigger", type=int, default=40, help="tasks before GEPA runs")
    parser.add_argument("--gepa-budget", type=int, default=20, help="GEPA metric calls")
    parser.add_argument("--gepa-heldout", type=int, default=12, help="gate's held-out items")
    parser.add_argument("--gepa-gate", action="store_true", help="use GEPA's pick only if passed")
    parser.add_argument("--noise", type=float, default=0.1, help="careless user share")
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--one-edit-tasks", type=int, default=3)
    parser.add_argument("--one-edit-n", type=int, default=20)
    parser.add_argument("--skip-one-edit", action="store_true")
    parser.add_argument("--skip-curve", action="store_true")
    args = parser.parse_args()
    if args.trigger % args.batch:
        parser.error("--trigger must be a multiple of --batch")
    families = args.families.split(",")
    started = time.perf_counter()
    bench = Bench(
        LocalBackend(default_model_dir(Settings().cache_dir), max_batch=8),
        build_rim(load_rim_config(PROJECT_CONFIGS)),
        GenerationLimits(answer_tokens=args.answer_tokens),
        load_memory_config(PROJECT_CONFIGS),
        args,
    )
    print(
        f"SmolLM2-135M, mode auto, {args.streams} streams x {args.stream_length} tasks per"
        f" family, batches of {args.batch} (an edit is used from the next batch on),"
        f" user noise {args.noise}, GEPA after {args.trigger} tasks (budget {args.gepa_budget}),"
        f" memory {MemoryPolicy().k} entries / {MemoryPolicy().token_budget} tokens (enabled)",
        flush=True,
    )
    if not args.skip_curve:
        learning_curve(bench, families)
    if not args.skip_one_edit:
        one_edit(bench, families)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
