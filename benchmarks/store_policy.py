"""What the local store's statement policy costs, beside the engine alone in the same run.

Each statement the store has not seen is parsed once more by the engine (``EXPLAIN AST``)
before it runs; verdicts are cached by text, so a repeated statement (a sink's INSERT header,
a dashboard's query) costs only a dictionary lookup. Three timings on one embedded chdb engine,
no HTTP: distinct statements without the policy (the baseline), distinct statements with it
(every one a cache miss), one repeated statement with it (cache hits). Nothing is asserted.

    .venv/bin/python benchmarks/store_policy.py [--statements 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

from deploy.local.store_policy import StatementPolicy
from deploy.local.store_server import ChdbEngine


def per_statement_us(
    engine: ChdbEngine, policy: StatementPolicy | None, sql_for: Callable[[int], str], n: int
) -> float:
    started = time.perf_counter()
    for i in range(n):
        sql = sql_for(i)
        if policy is not None:
            policy.check(sql, read_only=False)
        engine.execute(sql, "TabSeparated", "default", {}, {})
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=2000, help="statements per timing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        engine = ChdbEngine(folder)
        policy = StatementPolicy(engine.explain)
        n = args.statements
        baseline = per_statement_us(engine, None, lambda i: f"SELECT {i} + 1", n)
        misses = per_statement_us(engine, policy, lambda i: f"SELECT {i} + 2", n)
        hits = per_statement_us(engine, policy, lambda _i: "SELECT 1 + 1", n)
        engine.close()
    print(f"{'statements':<44}{'µs each':>10}{'vs baseline':>14}")
    for label, value in (
        ("distinct, engine alone (baseline)", baseline),
        ("distinct, with the policy (cache misses)", misses),
        ("repeated, with the policy (cache hits)", hits),
    ):
        print(f"{label:<44}{value:>10.0f}{value / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
