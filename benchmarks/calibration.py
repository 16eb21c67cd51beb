"""Judges vs simulated users, before and after a RIM calibration, on held-out traces.

The demo's agent answers the built-in task families; here a seeded ``ScriptedAgent``
(``atlas/simulation.py``) stands in for its model, right and bare at per-family rates between
the two conditions CALIBRATION.md measured for the offline model (plain prompt: right 20% /
8% / 100%, never bare; chat-turn examples: bare 80-98%), so hundreds of traces take seconds on
2 cores. The judges are the offline ones, ``configs/rim.yaml`` as shipped: the programmatic
``reference_match``, ``format`` and ``tool_success`` (which abstains: no tool calls). The LLM
judge is off there, as the offline 135M model cannot judge (CALIBRATION.md); with a real judge
model the same code path applies, with other figures. The people are the demo's
``SimulatedUser``s: approve an exactly bare, right answer, else edit it to the reference, and 10%
of the time do the careless opposite; their signal is RIM's own (``rim.reward.human_signal``).

It then runs what `atlas retrain rim` runs (``trainer.calibration.calibrate``: split by trace
id, weights and an isotonic map fitted on train, the agreement gate on held-out) and prints
the judges-vs-humans table on the held-out traces: every judge alone, the final judge score
with configs/rim.yaml (RIM v0) and with the calibration. It checks that the reward stream's own
rule (``Rim.combine`` with the calibration) gives the figures the fit measured, runs a second
calibration from the first one's result on the same traces, which the gate must reject, and
says how often other seeds' windows of the same size earn a published calibration.

    .venv/bin/python benchmarks/calibration.py [--traces 600] [--seed 3] [--repeats 20]

With ``--agent A`` it reads agent A's traces with human feedback from the store of this host's
stack instead (``ATLAS_HOME``; e.g. what `atlas demo` left: its model's real answers and its
simulated users' feedback), over ``--since`` (default 7 days), and prints the same table.

    ATLAS_HOME=... .venv/bin/python benchmarks/calibration.py --agent demo-20261127-215016
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atlas.settings import PROJECT_CONFIGS
from atlas.simulation import ScriptedAgent, SimulatedUser
from rim.config import build_rim, load_rim_config
from rim.reward import human_signal
from runtime.tasks import generate
from schemas.models import FeedbackEvent, InteractionEvent, JudgeScore
from trainer.calibration import (
    Agreement,
    Labelled,
    agreement,
    calibrate,
    load_calibration_config,
    split,
)

FAMILIES = ("arithmetic", "two_step", "extraction")
CORRECT = {"arithmetic": 0.2, "two_step": 0.1, "extraction": 0.95}
BARE = {"arithmetic": 0.5, "two_step": 0.4, "extraction": 0.6}


def simulated_traces(n: int, seed: int, noise: float) -> list[Labelled]:
    """``n`` scripted traces over the families, judged by configs/rim.yaml's judges, each with
    its simulated user's verdict as the human score."""
    rim = build_rim(load_rim_config(PROJECT_CONFIGS))
    agent, user = ScriptedAgent(CORRECT, BARE, seed), SimulatedUser(noise, seed)
    per_family = -(-n // len(FAMILIES))
    tasks = [t for f in FAMILIES for t in generate(f, "test", per_family, seed)][:n]
    events = [agent.interaction("demo-agent", t) for t in tasks]
    out = []
    for task, event, scores in zip(tasks, events, rim.judge_many(events), strict=True):
        verdict = user.verdict(task, event.final_answer)
        assert verdict is not None  # built-in tasks carry a reference
        kind, edited = verdict
        feedback = FeedbackEvent(trace_id=event.trace_id, kind=kind, edited_text=edited)
        human = human_signal(event.final_answer, [feedback])
        assert human is not None
        judged = {s.judge: s.score for s in scores if s.score is not None}
        out.append(Labelled(event.trace_id, judged, human))
    return out


def stored_traces(agent: str, window: timedelta) -> list[Labelled]:
    """The agent's traces with human feedback in the last ``window``, as the job reads them."""
    from atlas.settings import Settings
    from store.client import connect
    from store.monitoring import labelled_traces

    until = datetime.now(UTC)
    rows = labelled_traces(connect(Settings().store()), agent, until - window, until)
    return [Labelled(*row) for row in rows]


def row(name: str, a: Agreement) -> str:
    def num(v: float | None) -> str:
        return "  n/a" if v is None else f"{v:5.3f}"

    return (
        f"{name:<24} {a.n:>5} {num(a.spearman):>8} {num(a.kappa):>6} {a.mae:6.3f}"
        f"   {a.tp:>4} {a.fp:>4} {a.fn:>4} {a.tn:>4}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=600)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.1, help="Simulated users' carelessness.")
    parser.add_argument("--repeats", type=int, default=20, help="More seeds for the summary.")
    parser.add_argument("--agent", help="Read this agent's labelled traces from the store.")
    parser.add_argument("--since", type=float, default=168.0, help="--agent: hours back.")
    args = parser.parse_args()
    config = load_calibration_config(PROJECT_CONFIGS)
    rim_config = load_rim_config(PROJECT_CONFIGS)
    if args.agent:
        traces = stored_traces(args.agent, timedelta(hours=args.since))
        source = f"agent {args.agent}'s stored traces with feedback"
    else:
        traces = simulated_traces(args.traces, args.seed, args.noise)
        source = f"simulated (seed {args.seed}, user noise {args.noise})"
    current = rim_config.as_calibration()
    outcome = calibrate(traces, current, config)
    print(f"calibration job: {outcome.state}: {outcome.reason}")
    if outcome.candidate is None or outcome.before is None or outcome.after is None:
        return
    _, heldout = split(traces, config.heldout_share)
    humans = [t.human for t in heldout]
    print(
        f"\n{len(traces)} traces, {source}; {len(heldout)} held out; threshold {config.threshold}"
    )
    print(f"{'held-out: vs humans':<24} {'n':>5} {'spearman':>8} {'kappa':>6} {'MAE':>6}"
          f"   {'tp':>4} {'fp':>4} {'fn':>4} {'tn':>4}")  # fmt: skip
    for judge in sorted({j for t in heldout for j in t.judge_scores}):
        pairs = [(t.judge_scores[judge], t.human) for t in heldout if judge in t.judge_scores]
        if pairs:
            scores, people = zip(*pairs, strict=True)
            print(row(f"judge {judge}", agreement(scores, people, config.threshold)))
    print(row("final, rim v0 (yaml)", outcome.before))
    print(row("final, calibrated", outcome.after))
    print(f"\nweights v0: {current.weights}")
    print(f"calibrated: {outcome.candidate.weights}, map: {len(outcome.candidate.score_map)} knots")
    print("  " + ", ".join(f"{x:.4f}->{y:.3f}" for x, y in outcome.candidate.score_map))

    # The stream applies a calibration through Rim.combine: the same scores the fit measured.
    rim = build_rim(rim_config)
    probe = InteractionEvent(
        agent_id="a", task_id="t", task_input="x", mode="auto", final_answer=""
    )
    stream = [
        rim.combine(
            probe,
            [JudgeScore(judge=j, score=s) for j, s in t.judge_scores.items()],
            calibration=outcome.candidate,
        ).score
        for t in heldout
    ]
    same = agreement(stream, humans, config.threshold)
    print(
        f"\nRim.combine with the calibration: MAE {same.mae:.3f}"
        f" (the fit measured {outcome.after.mae:.3f})"
    )

    again = calibrate(traces, outcome.candidate, config)
    print(f"second calibration from the calibrated version: {again.state}: {again.reason}")
    if args.agent:
        return  # one agent's window: no other seeds to draw

    # How often a window of this size earns a calibration: other seeds (other tasks, answers,
    # users and held-out splits), the same rates.
    gains, passed = [], 0
    for seed in range(args.seed + 1, args.seed + 1 + args.repeats):
        other = calibrate(simulated_traces(args.traces, seed, args.noise), current, config)
        passed += other.state == "SUCCEEDED"
        if other.before is not None and other.after is not None:
            gains.append(other.before.mae - other.after.mae)
    if gains:
        gains.sort()
        print(
            f"\n{args.repeats} more seeds: {passed} published; held-out MAE gain"
            f" min {gains[0]:.3f} / median {gains[len(gains) // 2]:.3f} / max {gains[-1]:.3f}"
        )


if __name__ == "__main__":
    main()
