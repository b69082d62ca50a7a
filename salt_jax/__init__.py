"""salt_jax: SALT (small-model-aided large-model training) in JAX/Flax.

The subpackages follow the data flow, and imports point only down this list:

    data/        corpus sources -> tokenizer -> token store -> step-indexed batches
    model/       the Transformer, attention kernels, sharding, presets, FLOP count, checkpoints
    hf/          Hugging Face interop (import / export); never imports kd/ or train/
    kd/          the method table, KD losses and the SALT objective, schedules, teacher, SALT_DS selection
    config.py    the run config (every field, one comment each) and its validation
    train/       state, optimizer, the fused teacher+student step, the loop and its hooks, faults, metrics
    experiment/  the comparison pipeline and its report
    aot/         ahead-of-time compilation for TPU slices: fits or not, the compiler's cost estimate

errors.py (UserError) is shared by all. Entry points: `python -m salt_jax.main`
(one run), `salt_jax.experiment`, `salt_jax.hf`, `salt_jax.prepare` (the token store ahead
of training), `salt_jax.bench` and `salt_jax.compile` (a run compiled for a TPU slice).
"""
