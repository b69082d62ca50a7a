"""Every method, 3 seeds, on CPU: repro-teacher -> repro-student on the standard library.

Measured running time on a 2-core CPU is in docs/results.md (about 35 minutes).
"""

import ml_collections

from salt_jax.recipes import repro_run


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "repro"  # shown in the report's title
    c.teacher = repro_run("teacher")  # run config of the teacher (trained in DIR/teacher)
    c.teacher_path = ""  # reuse this teacher instead of training one
    c.student = repro_run("baseline")  # run config shared by every student; each method sets only config.salt
    c.methods = ("baseline,rkd,salt,salt-linear,salt-ratio,salt_ds,salt-adaptive,"
                 "salt-tokensel")  # comma-separated variants, optionally VARIANT[field=value,...]
    c.seeds = "0,1,2"  # each sets config.seed and config.data.seed
    c.lr_sweep = "1e-3,3e-3,1e-2"  # the baseline's learning rate is chosen by this sweep (seed 0)
    c.lr_note = ""  # (set by the sweep)
    c.progress = False  # per-run progress lines
    c.ray_resources = "num_cpus=1"  # per run with --engine=ray: num_cpus=N, num_gpus=N, TPU=N (a TPU host)
    return c
