"""Training: one run from its config, top to bottom.

- state.py: the train state, created straight into its shardings
- optim.py: AdamW with the learning-rate schedule (optax)
- step.py: the step builder (teacher optional) and the compiled steps
- workdir.py: the run directory: checked before anything is built, locked while a run uses it, its config.json
- setup.py: everything before the first step: store, mesh, state, teacher, steps, batches
- hooks.py: the work after a step as named hooks over one Context, and their table (how often each runs)
- meter.py: the training clock and the timing of each log interval (StepMeter, TrainClock)
- loop.py: the loop: `run(config, workdir)`
- metrics.py: metrics.jsonl and TensorBoard, the train line
- wandb_log.py: Weights & Biases (config.logging.wandb): the same scalars, one W&B run across restarts
- fewshot.py: few-shot scores during training (config.eval), through salt_jax.eval
- faults.py: preemption (SIGTERM) and the fault-injection drills

Imports: salt_jax.errors, salt_jax.paths, salt_jax.data, salt_jax.model, salt_jax.hf, salt_jax.kd, salt_jax.config, salt_jax.eval

Never experiment/ or aot/. Joining JAX's distributed runtime is salt_jax.distributed (top level).
"""
