"""Few-shot scoring with and without shared contexts, on one checkpoint in one process.

    python scripts/bench_fewshot_share.py --workdir=RUN [--tasks=stdlib_next_line,stdlib_identifier]
        [--num_fewshot=1] [--limit=0] [--batch_size=32]

Each task's lm-eval requests are built once, then scored by `SaltLM` per request (share_contexts=False:
every choice runs its whole window, the reference) and with shared contexts (each context prefilled
once into a KV cache, the choices scored against it). Each path runs twice: the first run compiles,
the second is timed. Prints, per task and path, the requests, the tokens run through the model
(`Engine.tokens_run`), the positions computed (`Engine.positions_run`: padding included) and the seconds;
then the ratios, the largest difference of the two paths' log-likelihoods (absolute, and in float32 units
in the last place of the value) and whether every greedy flag agrees.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def timed(lm, requests) -> tuple[list, int, int, float]:
    """(results, tokens run, positions run, seconds) of the second of two identical scorings (the first
    compiles)."""
    score = getattr(lm, requests[0].request_type)
    score(requests)
    lm.engine.tokens_run = lm.engine.positions_run = 0
    start = time.perf_counter()
    results = score(requests)
    return results, lm.engine.tokens_run, lm.engine.positions_run, time.perf_counter() - start


def compare(each: list, shared: list) -> tuple[float, float, bool]:
    """(largest |difference| of log-likelihoods, the same in float32 ulps of the value, greedy flags equal)."""
    pairs = [(a, b) if isinstance(a, tuple) else ((a, True), (b, True)) for a, b in zip(each, shared)]
    x = np.array([a[0] for a, _ in pairs])
    y = np.array([b[0] for _, b in pairs])
    ulps = np.abs(x - y) / np.spacing(np.abs(x).astype(np.float32)).astype(np.float64)
    return float(np.max(np.abs(x - y))), float(np.max(ulps)), all(a[1] == b[1] for a, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a run, or one of its checkpoint directories")
    parser.add_argument("--tasks", default="stdlib_next_line,stdlib_identifier")
    parser.add_argument("--num_fewshot", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="documents per task; 0 = all")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()

    from salt_jax import cli
    from salt_jax.eval import harness, load
    from salt_jax.eval.engine import Engine

    cli.keep_jax_off_an_absent_tpu()  # (a host with libtpu and no TPU: the CPU, quietly)
    loaded = load.load(args.workdir)
    engine = Engine(loaded.model_cfg, loaded.params, loaded.mesh, batch_size=args.batch_size)
    print(f"{'task':<20} {'path':<12} {'requests':>8} {'tokens':>8} {'positions':>9} {'seconds':>8}")
    for name in args.tasks.split(","):
        requests = harness.task_requests(name, args.num_fewshot, args.limit or None)
        runs = {}
        for path, share in (("per-request", False), ("shared", True)):
            runs[path] = timed(harness.SaltLM(engine, loaded.tokenizer, share_contexts=share), requests)
            _, tokens, positions, seconds = runs[path]
            print(f"{name:<20} {path:<12} {len(requests):>8} {tokens:>8} {positions:>9} {seconds:>8.2f}")
        (each, *before), (shared, *after) = runs["per-request"], runs["shared"]
        diff, ulps, same = compare(each, shared)
        tokens, positions, seconds = (b / a for b, a in zip(before, after))
        print(f"{name:<20} per-request / shared: tokens {tokens:.2f}x, positions {positions:.2f}x, seconds "
              f"{seconds:.2f}x; max |log-likelihood difference| {diff:.2e} ({ulps:.1f} float32 ulps); greedy flags "
              f"equal: {same}")


if __name__ == "__main__":
    main()
