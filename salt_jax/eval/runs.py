"""A checkpoint evaluated or sampled, as `python -m salt_jax.eval` and `python -m salt_jax.sample` do it.

Library functions (no command-line flags here, so both can be used from one process, a notebook or a
test): `evaluate` writes lm-eval's results beside the run, `sample` returns continuations. With several
processes, call them on every process: process 0 drives, the others serve the model calls.
"""

from __future__ import annotations

import json
import logging
import os

from salt_jax import paths
from salt_jax.errors import UserError


def evaluate_run(workdir: str, tasks: list[str], step: int | None = None, num_fewshot: int | None = None,
             limit: float | None = None, include_path: str | None = None, batch_size: int = 32, seed: int = 1234,
             out: str | None = None) -> dict | None:
    """Evaluates; returns lm-eval's results on process 0 (None on the others), having written them.

    icl_probe (salt_jax.eval.icl_probe) is scored on the run's held-out split (its config.json's data, the
    store opened, or built if missing), with windows = `limit` when it is a count, and its numbers join
    lm-eval's results under "results" (lm-eval is not imported when it is the only task)."""
    import jax

    from salt_jax.eval import icl_probe, load
    from salt_jax.eval.engine import Engine

    probe, lm_tasks = icl_probe.split_names(tasks)
    if lm_tasks:
        from salt_jax.eval import harness

        manager = harness.task_manager(include_path, lm_tasks)
        harness.check_tasks(lm_tasks, manager)  # before anything is restored
    loaded = load.load(workdir, step)
    windows = _probe_windows(loaded, seed, limit) if probe else None
    engine = Engine(loaded.model_cfg, loaded.params, loaded.mesh, batch_size=batch_size)
    if jax.process_index() != 0:
        engine.serve()
        return None
    root = workdir.rstrip("/")
    out = out or paths.join(root, "eval_results.json" if step is None else f"eval_results-step{loaded.step}.json")
    log = paths.join(os.path.dirname(out) or ".", "lm_eval.log")  # lm-eval's own lines, beside the results
    results, probed = {"results": {}}, {}
    try:
        if windows is not None:
            probed = icl_probe.scores(engine.token_logprobs, windows, loaded.tokenizer.pad_id, engine.batch_size)
        if lm_tasks:
            lm = harness.SaltLM(engine, loaded.tokenizer, seed=seed)
            results = harness.evaluate(lm, lm_tasks, num_fewshot=num_fewshot, limit=limit, seed=seed,
                                       manager=manager, log=log)
    finally:
        engine.close()
    if lm_tasks:
        from lm_eval.utils import make_table

        print(make_table(results), flush=True)
    if probed:
        results["results"].update(icl_probe.results(probed)["results"])
        print(icl_probe.table(probed), flush=True)
    results["salt_jax"] = {"workdir": workdir, "checkpoint": loaded.checkpoint, "step": loaded.step}
    paths.write_atomic(out, json.dumps(results, indent=2, default=_serializable))
    logging.info("step %d: wrote %s", loaded.step, out)
    return results


def _serializable(value):
    """lm-eval's fallback for what json cannot write (numpy numbers, sets, ...), imported when it is needed (an
    icl_probe-only evaluation writes plain floats)."""
    from lm_eval.utils import handle_non_serializable

    return handle_non_serializable(value)


def _probe_windows(loaded, seed: int, limit: float | None):
    """icl_probe's windows of the checkpoint's run: its held-out split, read from its config.json's data."""
    import ml_collections

    from salt_jax.data import store as store_lib
    from salt_jax.eval import icl_probe

    data = (loaded.run_config or {}).get("data")
    if not data:
        raise UserError(f"--tasks={icl_probe.NAME}: {loaded.checkpoint} has no run config.json with its data, so "
                        "no held-out split to probe; give a training run's workdir")
    store, _ = store_lib.build_store(ml_collections.ConfigDict(data))
    count = int(limit) if limit is not None and limit >= 1 else icl_probe.WINDOWS
    return icl_probe.windows(icl_probe.heldout_split(store), seed, count)


def sample(workdir: str, prompt: str, max_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, num_samples: int = 1, step: int | None = None,
           stop: str | None = None) -> list[str]:
    """The continuations of `prompt` (without it) from checkpoint `step` (default: the latest) of `workdir`."""
    import jax

    from salt_jax.eval import load
    from salt_jax.eval.engine import Engine

    if max_tokens < 1:
        raise UserError(f"--max_tokens={max_tokens}: must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise UserError(f"--temperature={temperature} / --top_p={top_p} / --top_k={top_k}: need temperature >= 0, "
                        "0 < top_p <= 1 and top_k >= 0")
    loaded = load.load(workdir, step)
    if max_tokens >= loaded.model_cfg.max_len:
        raise UserError(f"--max_tokens={max_tokens}: the model's context is {loaded.model_cfg.max_len} tokens; "
                        "ask for fewer")
    engine = Engine(loaded.model_cfg, loaded.params, loaded.mesh, batch_size=num_samples)
    tok = loaded.tokenizer
    if jax.process_index() != 0:
        engine.serve()
        return []
    try:
        ids = tok.encode([prompt])[0] or [getattr(tok, "bos_id", None) or tok.eos_id]
        outs = engine.generate([ids] * num_samples, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed, eos_id=tok.eos_id,
                               stop=(lambda new: stop in tok.decode(new)) if stop else None)
    finally:
        engine.close()
    texts = [tok.decode(o) for o in outs]
    return [t.split(stop)[0] for t in texts] if stop else texts
