"""Ahead-of-time compilation for TPU slices, from any host with libtpu (no TPU needed).

- topology.py: TPU slices by name (v5p:4x4x4, v5p-128): their devices from libtpu, HBM per chip
- programs.py: the run's programs (KD step, teacher-free step, SALT_DS scoring) from abstract shapes
- estimate.py: memory per chip and the compiler's cost estimate, with its corrections
- check.py: compile a run for a slice (and search mesh shapes x remat policies): the report

Imports: salt_jax.errors, salt_jax.data, salt_jax.model, salt_jax.hf, salt_jax.kd, salt_jax.config, salt_jax.train

Never experiment/ or the entry points. The command line is salt_jax.compile.
"""
