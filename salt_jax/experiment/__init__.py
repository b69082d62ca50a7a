"""The comparison experiment: a teacher, then students under each method and seed, then the report.

    pipeline.py  trains (or reuses) every run of an experiment config
    ray_runs.py  ... or trains each batch of independent runs at once as Ray tasks (--engine=ray)
    report.py    curves, compute, time to the baseline's quality; report.md, results.json
    plots.py     the PNG plots: loss vs step and compute, few-shot scores, the many-method overview
    __main__.py  python -m salt_jax.experiment

The top stage: may import every other subpackage.
"""
