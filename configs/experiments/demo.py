"""The README's main job: demo teacher, then baseline and SALT students on the standard library (CPU).

    --config=configs/experiments/demo.py             the paper's regime: a teacher of 0.55x the student's
                                                     parameters, trained on as many tokens as its run
    --config=configs/experiments/demo.py:first_pair  the first demo's pair, kept as the contrast
                                                     (docs/results.md): teacher 0.27x, 0.8x the tokens
"""

import ml_collections

from salt_jax.config import base_config
from salt_jax.recipes import demo_run


def get_config(pair: str = "paper_regime"):
    if pair not in ("paper_regime", "first_pair"):
        raise ValueError(f"configs/experiments/demo.py:{pair}: use paper_regime (the default) or first_pair")
    c = ml_collections.ConfigDict()
    c.name = "demo" if pair == "paper_regime" else "demo, first pair"  # shown in the report's title
    c.teacher = demo_run("teacher")  # run config of the teacher, trained in DIR/teacher unless teacher_path is set
    if pair == "first_pair":  # demo-teacher (0.40M, 0.27x) for 400 steps: 0.8x a student's tokens
        c.teacher.model, c.teacher.train.steps = base_config("demo-teacher").model, 400
    c.teacher_path = ""  # reuse this teacher (workdir or checkpoint directory) instead of training one
    c.student = demo_run("baseline")  # run config shared by every student; each method sets only config.salt
    # Few-shot scores during training (docs/evaluation.md): the offline tasks, 1-shot, 200 documents each,
    # at the loss table's fractions of the run (25/50/70/100%) and at step 0.
    c.student.eval.tasks = "stdlib_next_line,stdlib_identifier,stdlib_line_completion,stdlib_perplexity"
    c.student.eval.num_fewshot = 1
    c.student.eval.limit = 200
    c.student.eval.steps = "25%,50%,70%,100%"  # (steps 125, 250, 350, 500 of 500)
    c.methods = "baseline,salt"  # comma-separated variants (configs/demo.py), optionally VARIANT[field=value,...]
    c.seeds = "0"  # comma-separated seeds; each sets config.seed and config.data.seed
    c.lr_sweep = ""  # comma-separated learning rates to sweep on the baseline first (best is used for all)
    c.lr_note = ("the best final held-out loss of the baseline in the repro experiment's sweep over 1e-3, "
                 "3e-3 and 1e-2 (a smaller student on the same data, docs/results.md); not re-swept at demo "
                 "size.")  # how the fixed learning rate was chosen, for the report
    c.progress = True  # per-run progress lines
    c.ray_resources = "num_cpus=1"  # per run with --engine=ray: num_cpus=N, num_gpus=N, TPU=N (a TPU host)
    return c
