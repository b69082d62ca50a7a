"""Training: one run from its config, top to bottom.

    state.py        the train state, created straight into its shardings
    optim.py        AdamW with the learning-rate schedule (optax)
    step.py         the step builder (teacher optional) and the compiled steps
    setup.py        everything before the first step: store, mesh, state, teacher, steps, batches
    hooks.py        periodic hooks, the step meter (timing), the non-finite check
    loop.py         the loop: `run(config, workdir)`
    metrics.py      metrics.jsonl and TensorBoard, the train line
    wandb_log.py    Weights & Biases (config.logging.wandb): the same scalars, one W&B run across restarts
    fewshot.py      few-shot scores during training (config.eval)
    faults.py       preemption (SIGTERM) and the fault-injection drills
    distributed.py  joining JAX's distributed runtime

May import salt_jax.data, model, hf, kd and config; never experiment/.
"""
