"""Evaluation beyond held-out loss: few-shot benchmark scores (lm-evaluation-harness) and generation.

- engine.py: a model on the mesh: batched log-likelihoods, KV-cache decoding, multi-process serving
- harness.py: lm-eval's model API over the engine, task lookup, `evaluate` and flat scores
- icl_probe.py: the in-context-learning probe (induction score, in-context slope) on held-out token windows
- load.py: a run's checkpoint + tokenizer, ready to evaluate
- runs.py: a checkpoint evaluated (lm-eval results written beside it) or sampled: what the CLIs call
- tasks/: offline lm-eval tasks built from held-out standard-library files
- __main__.py: python -m salt_jax.eval (flags only; salt_jax.sample is the text command)

Imports: salt_jax.errors, salt_jax.paths, salt_jax.cli, salt_jax.distributed, salt_jax.data, salt_jax.model

Nothing here is imported by `import salt_jax`; lm-eval is imported only by harness.py.
"""
