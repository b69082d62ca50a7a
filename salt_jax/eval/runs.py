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
    """Evaluates; returns lm-eval's results on process 0 (None on the others), having written them."""
    import jax
    from lm_eval.utils import handle_non_serializable, make_table

    from salt_jax.eval import harness, load
    from salt_jax.eval.engine import Engine

    manager = harness.task_manager(include_path, tasks)
    harness.check_tasks(tasks, manager)  # before anything is restored
    loaded = load.load(workdir, step)
    engine = Engine(loaded.model_cfg, loaded.params, loaded.mesh, batch_size=batch_size)
    if jax.process_index() != 0:
        engine.serve()
        return None
    root = workdir.rstrip("/")
    out = out or paths.join(root, "eval_results.json" if step is None else f"eval_results-step{loaded.step}.json")
    log = paths.join(os.path.dirname(out) or ".", "lm_eval.log")  # lm-eval's own lines, beside the results
    try:
        lm = harness.SaltLM(engine, loaded.tokenizer, seed=seed)
        results = harness.evaluate(lm, tasks, num_fewshot=num_fewshot, limit=limit, seed=seed, manager=manager,
                                   log=log)
    finally:
        engine.close()
    results["salt_jax"] = {"workdir": workdir, "checkpoint": loaded.checkpoint, "step": loaded.step}
    paths.write_atomic(out, json.dumps(results, indent=2, default=handle_non_serializable))
    print(make_table(results), flush=True)
    logging.info("step %d: wrote %s", loaded.step, out)
    return results


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
