"""A seconds-long experiment on test-tiny models (used by the tests and for trying the pipeline)."""

import ml_collections

from salt_jax.recipes import tiny_run


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "test-tiny"  # shown in the report's title
    c.teacher = tiny_run("teacher")  # run config of the teacher (trained in DIR/teacher)
    c.teacher.train.steps = 30
    c.teacher_path = ""  # reuse this teacher instead of training one
    c.student = tiny_run("baseline")  # run config shared by every student
    c.student.data.seq_len = 32
    c.student.train.steps = 24
    c.student.train.heldout_every = 4
    c.student.train.log_every = 4
    c.student.train.checkpoint_every = 12
    c.teacher.data = c.student.data  # same data and tokenizer as the students
    c.methods = "baseline,salt"  # comma-separated variants, optionally VARIANT[field=value,...]
    c.seeds = "0"  # comma-separated seeds
    c.lr_sweep = ""  # learning rates to sweep on the baseline first
    c.lr_note = "the test-tiny default (not tuned)."  # how the fixed learning rate was chosen
    c.progress = False  # per-run progress lines
    c.ray_resources = "num_cpus=1"  # per run with --engine=ray: num_cpus=N, num_gpus=N, TPU=N (a TPU host)
    return c
