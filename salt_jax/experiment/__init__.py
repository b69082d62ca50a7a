"""The comparison experiment: a teacher, then students under each method and seed, then the report.

- pipeline.py: trains (or reuses) every run of an experiment config
- ray_runs.py: ... or trains each batch of independent runs at once as Ray tasks (--engine=ray)
- report.py: curves, compute, time to the baseline's quality; report.md, results.json
- writeup.py: the report's words: the conclusion, the few-shot reading, the markdown tables
- plots.py: the PNG plots: loss vs step and compute, few-shot scores, the many-method overview
- horizon.py: the horizon study: the experiment at 1x, 2x, 4x ... the student's steps; horizon.md, horizon.png
- __main__.py: python -m salt_jax.experiment

Imports: salt_jax.errors, salt_jax.paths, salt_jax.cli, salt_jax.distributed, salt_jax.renamed, salt_jax.data, salt_jax.model, salt_jax.hf, salt_jax.kd, salt_jax.config, salt_jax.train
"""
