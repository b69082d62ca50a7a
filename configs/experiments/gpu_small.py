"""One accelerator: a gpu-25m teacher and a gpu-100m student (4x) on the standard library, bf16."""

import ml_collections

from salt_jax.recipes import gpu_small_run


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "gpu_small"  # shown in the report's title
    c.teacher = gpu_small_run("teacher")  # run config of the teacher (trained in DIR/teacher)
    c.teacher_path = ""  # reuse this teacher instead of training one
    c.student = gpu_small_run("baseline")  # run config shared by every student
    c.methods = "baseline,salt,salt_ds,salt-adaptive"  # comma-separated variants
    c.seeds = "0"  # comma-separated seeds
    c.lr_sweep = ""  # learning rates to sweep on the baseline first
    c.lr_note = "1e-3, not tuned (this config has not been run yet; see docs/results.md)."  # how the LR was chosen
    c.progress = True  # per-run progress lines
    c.ray_resources = "num_gpus=1"  # per run with --engine=ray: one GPU each (or num_cpus=N, TPU=N)
    return c
