"""Simulated canary rollouts: the sequential test of ``streams/rollout_stats.py`` beside a
fixed-horizon Welch z-test at the same alpha, and beside that z-test peeked at every batch.

For each true difference in mean reward (canary minus a production mean of ``--base``), each
rollout routes events to the canary with probability ``--share`` (a hash split) and the tests
look after every ``--batch`` events:

* sequential: the confidence-sequence test, decided as ``decide`` decides (checked against
  ``decide`` itself at every stop), until a verdict or ``--max-samples`` rewards per arm;
* fixed horizon: one Welch z-test when the events reach ``max_samples / min(share, 1 - share)``
  (the smaller arm then holds about ``max_samples``): promote if z > z(1 - alpha), roll back if
  z < -z(1 - alpha), otherwise undecided;
* fixed, sized: the same test at the horizon a planner would pick for 80% power at a difference
  of 0.05 with the worst-case variance 1/4 (the one the sequential test assumes):
  ``(z(1 - alpha) + z(0.8))^2 / 4 * (1 / share + 1 / (1 - share)) / 0.05^2`` events;
* peeked z: the same z-test at every batch up to that horizon, stopping at the first crossing
  (what a dashboard watched by a person amounts to; no guarantee).

Rewards, two kinds: ``bernoulli`` (success or failure: the largest variance a mean in [0, 1]
can have) and ``dense`` (an RIM-like score: 0 with probability 0.1, a judge failure or refusal,
otherwise Beta with concentration 8 and the mean that makes the overall mean right).

Columns: promoted, rolled back and undecided (abort at the maximum or no verdict at the
horizon) rates; wrong: a verdict whose claim is false (promote claims the difference is above
``-margin``, roll back that it is below; so at a difference of 0 with margin 0 both are wrong,
and a wrong promotion is promoting at a difference <= 0); correct: a verdict whose claim is
true; median events: the events (both arms) a rollout took to stop, undecided ones included at
the point they stopped.

    .venv/bin/python benchmarks/rollout.py [--rollouts 200] [--share 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time
from statistics import NormalDist

import numpy as np

from streams.rollout_stats import ArmStats, RolloutState, RolloutTestConfig, decide, radius

DIFFERENCES = (-0.10, -0.05, 0.0, 0.05, 0.10)
ZERO_MASS, CONCENTRATION = 0.1, 8.0  # the dense rewards' point mass at 0 and Beta a + b
PLANNED_EFFECT = 0.05  # the difference the sized fixed-horizon test is planned for
Data = dict[str, np.ndarray]  # per rollout and look: each arm's count, sum, sum of squares
CHUNK = 50  # rollouts simulated at once: bounds memory at a few hundred MB


def rewards(rng: np.random.Generator, kind: str, mean: float, shape: tuple[int, int]) -> np.ndarray:
    if kind == "bernoulli":
        return (rng.random(shape) < mean).astype(np.float64)
    inner = mean / (1 - ZERO_MASS)
    beta = rng.beta(inner * CONCENTRATION, (1 - inner) * CONCENTRATION, shape)
    return np.where(rng.random(shape) < ZERO_MASS, 0.0, beta)


def cumulative(
    rng: np.random.Generator,
    kind: str,
    base: float,
    diff: float,
    share: float,
    batch: int,
    looks: int,
    rollouts: int,
) -> Data:
    """Per rollout and look: count, sum and sum of squares of each arm."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, rollouts, CHUNK):
        shape = (min(CHUNK, rollouts - start), looks * batch)
        canary = rng.random(shape) < share
        reward = np.where(canary, rewards(rng, kind, base + diff, shape), 0.0)
        reward += np.where(canary, 0.0, rewards(rng, kind, base, shape))
        for arm, mask in (("c", canary), ("p", ~canary)):
            for name, values in (("n", mask), ("s", reward * mask), ("q", reward**2 * mask)):
                per_look = values.reshape(shape[0], looks, batch).sum(axis=2, dtype=np.float64)
                parts.setdefault(arm + name, []).append(np.cumsum(per_look, axis=1))
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


def first_stop(stopped: np.ndarray) -> np.ndarray:
    """Index of each rollout's first stopping look, or the last look when it never stops."""
    return np.where(stopped.any(axis=1), stopped.argmax(axis=1), stopped.shape[1] - 1)


def sequential(data: Data, config: RolloutTestConfig) -> tuple[np.ndarray, np.ndarray]:
    """Verdicts (1 promote, -1 roll back, 0 undecided) and stopping looks of the CS test."""
    largest = int(max(data["cn"].max(), data["pn"].max()))
    table = np.array([radius(n, config) for n in range(largest + 1)])
    bounds = []
    for arm in "cp":
        n = data[arm + "n"].astype(np.int64)
        mean = np.divide(data[arm + "s"], n, out=np.zeros(n.shape), where=n > 0)
        bounds.append((np.clip(mean - table[n], 0, 1), np.clip(mean + table[n], 0, 1)))
    (c_lo, c_hi), (p_lo, p_hi) = bounds
    fewest = np.minimum(data["cn"], data["pn"])
    eligible = fewest >= config.min_samples
    promote = eligible & (c_lo - p_hi > -config.margin)
    rollback = eligible & ~promote & (c_hi - p_lo < -config.margin)
    stop = first_stop(promote | rollback | (eligible & (fewest >= config.max_samples)))
    rows = np.arange(len(stop))
    verdict = np.where(promote[rows, stop], 1, np.where(rollback[rows, stop], -1, 0))
    return verdict, stop


def agreement(
    data: Data, config: RolloutTestConfig, verdict: np.ndarray, stop: np.ndarray
) -> tuple[int, int]:
    """How many stops ``decide`` itself agrees with: the same verdict at the stop, and
    ``extend`` at the look before it."""
    names = {1: "promote", -1: "rollback"}
    agreed = 0
    for i, (v, k) in enumerate(zip(verdict, stop, strict=True)):
        states = [_state(data, i, look) for look in (k - 1, k) if look >= 0]
        verdicts = [decide(state, config).verdict for state in states]
        expected = names.get(int(v), ("abort", "extend"))
        agreed += (verdicts[-1] in expected) and all(x == "extend" for x in verdicts[:-1])
    return agreed, len(stop)


def _state(data: Data, i: int, look: int) -> RolloutState:
    def arm(key: str) -> ArmStats:
        count = int(data[key + "n"][i, look])
        return ArmStats(count=count, total=min(float(data[key + "s"][i, look]), count))

    return RolloutState(canary=arm("c"), production=arm("p"))


def welch_z(data: Data, look: np.ndarray | slice, margin: float) -> np.ndarray:
    stats = []
    for arm in "cp":
        n = np.maximum(data[arm + "n"][:, look], 2)  # a look this early never decides anyway
        mean = data[arm + "s"][:, look] / n
        stats.append((mean, (data[arm + "q"][:, look] - n * mean**2) / (n - 1) / n))
    (c_mean, c_var), (p_mean, p_var) = stats
    spread = np.sqrt(np.maximum(c_var + p_var, 1e-12))
    return (c_mean - p_mean + margin) / spread


def summary(diff: float, margin: float, verdict: np.ndarray, events: np.ndarray) -> list[str]:
    better = diff > -margin + 1e-12
    worse = diff < -margin - 1e-12
    promoted, rolled = verdict == 1, verdict == -1
    wrong = (promoted & ~better) | (rolled & ~worse)
    correct = (promoted & better) | (rolled & worse)
    rates = [x.mean() for x in (promoted, rolled, verdict == 0, wrong, correct)]
    return [f"{100 * r:.1f}%" for r in rates] + [f"{int(np.median(events))}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=200, help="rollouts per difference")
    parser.add_argument("--share", type=float, default=0.1, help="canary share of traffic")
    parser.add_argument("--base", type=float, default=0.6, help="production mean reward")
    parser.add_argument("--batch", type=int, default=20, help="events between looks")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--min-samples", type=int, default=30)
    parser.add_argument("--max-samples", type=int, default=4000, help="per arm")
    parser.add_argument("--tuned-samples", type=int, default=1000)
    parser.add_argument("--kinds", default="bernoulli,dense", help="reward kinds, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.share < 1 or not 0.1 < args.base < 0.8:
        parser.error("--share must be in (0, 1) and --base in (0.1, 0.8)")
    started = time.perf_counter()
    config = RolloutTestConfig(
        alpha=args.alpha,
        margin=args.margin,
        min_samples=args.min_samples,
        max_samples=args.max_samples,
        tuned_samples=args.tuned_samples,
    )
    smaller = min(args.share, 1 - args.share)
    horizon_look = math.ceil(args.max_samples / smaller / args.batch) - 1
    z_crit = NormalDist().inv_cdf(1 - args.alpha)
    planned = (z_crit + NormalDist().inv_cdf(0.8)) ** 2 / 4 / PLANNED_EFFECT**2
    sized_look = min(
        math.ceil(planned * (1 / args.share + 1 / (1 - args.share)) / args.batch) - 1,
        horizon_look,
    )
    # Room past the horizon for the sequential test's smaller arm to reach max_samples.
    looks = math.ceil(1.15 * (horizon_look + 1)) + 10
    rng = np.random.default_rng(args.seed)
    print(
        f"{args.rollouts} rollouts per difference, canary share {args.share:g}, production mean"
        f" {args.base:g}, a look every {args.batch} events; alpha {config.alpha:g}, margin"
        f" {config.margin:g}, min {config.min_samples} / max {config.max_samples} rewards per"
        f" arm, rho {config.rho:.1f} (tuned for {config.tuned_samples}); fixed horizon"
        f" {(horizon_look + 1) * args.batch} events, sized {(sized_look + 1) * args.batch}\n"
    )
    checked = agreed = 0
    for kind in args.kinds.split(","):
        print(f"### {kind} rewards\n")
        print(
            "| difference | test | promoted | rolled back | undecided | wrong | correct"
            " | median events |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for diff in DIFFERENCES:
            data = cumulative(
                rng, kind, args.base, diff, args.share, args.batch, looks, args.rollouts
            )
            verdict, stop = sequential(data, config)
            ok, n = agreement(data, config, verdict, stop)
            agreed, checked = agreed + ok, checked + n
            fixed, sized = (
                np.sign(z) * (np.abs(z) > z_crit)
                for z in (welch_z(data, look, config.margin) for look in (horizon_look, sized_look))
            )
            z_all = welch_z(data, slice(0, horizon_look + 1), config.margin)
            fewest = np.minimum(data["cn"], data["pn"])[:, : horizon_look + 1]
            enough = fewest >= max(config.min_samples, 2)
            crossed = enough & (np.abs(z_all) > z_crit)
            peek_stop = first_stop(crossed)
            z_stop = z_all[np.arange(len(peek_stop)), peek_stop]
            peeked = np.where(crossed.any(axis=1), np.sign(z_stop), 0).astype(int)
            for name, v, events in (
                ("sequential CS", verdict, (stop + 1) * args.batch),
                ("fixed-horizon z", fixed, np.full(len(fixed), (horizon_look + 1) * args.batch)),
                ("fixed z, sized", sized, np.full(len(sized), (sized_look + 1) * args.batch)),
                ("peeked z", peeked, (peek_stop + 1) * args.batch),
            ):
                cells = summary(diff, config.margin, v, events)
                print(f"| {diff:+.2f} | {name} | " + " | ".join(cells) + " |")
        print()
    print(f"decide() agreed with the vectorised sequential test at {agreed}/{checked} stops")
    print(f"run time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
