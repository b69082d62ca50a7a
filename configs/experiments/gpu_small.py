"""One accelerator, in the paper's regime: a gpu-50m teacher and a gpu-100m student on the standard library, bf16.

The teacher has 0.49x the student's parameters (48.8M for 100.1M; 0.43x without embeddings, the paper's
1.5B-for-2.8B is 0.54x) and trains as many steps of the same batch as the student: 4000 x 64 x 512 =
131M tokens each. Sized by the FLOP model (salt_jax.model.flops, 3 x forward per trained token) for
about 10 minutes of one H100 (989 TFLOP/s dense bf16) at 40% MFU:

    teacher   4000 steps x 3 F_T          103 s
    baseline  4000 steps x 3 F_S          208 s
    salt      4000 x 3 F_S + 700 x F_T    214 s   (n_KD = 17.5% = 700 steps of teacher forwards)
    total                                 525 s   (+ evaluation: 16 held-out batches every 250 steps)

`tests/test_experiment.py::test_gpu_small_fits_ten_minutes_by_the_flop_model_and_runs_on_cpu` recomputes it.
"""

import ml_collections

from salt_jax.recipes import gpu_small_run


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "gpu_small"  # shown in the report's title
    c.teacher = gpu_small_run("teacher")  # run config of the teacher (trained in DIR/teacher)
    c.teacher_path = ""  # reuse this teacher instead of training one
    c.student = gpu_small_run("baseline")  # run config shared by every student
    c.methods = "baseline,salt"  # comma-separated variants (e.g. add salt_ds,salt-adaptive: ~4 min each)
    c.seeds = "0"  # comma-separated seeds
    c.lr_sweep = ""  # learning rates to sweep on the baseline first
    c.lr_note = "1e-3, not tuned (this config has not been run yet; see docs/results.md)."  # how the LR was chosen
    c.progress = True  # per-run progress lines
    c.ray_resources = "num_gpus=1"  # per run with --engine=ray: one GPU each (or num_cpus=N, TPU=N)
    return c
