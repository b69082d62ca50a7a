"""CPU demo on the standard library: the demo teacher, and the demo student under each method.

    --config=configs/demo.py                 baseline student (demo-student, ~1.5M parameters)
    --config=configs/demo.py:teacher         the teacher (demo-teacher-half, ~0.8M parameters, 0.55x the student)
    --config=configs/demo.py:rkd             KD for the whole run
    --config=configs/demo.py:salt            SALT, step transition at n_KD
    --config=configs/demo.py:salt_ds         SALT with teacher-selected KD-phase data
    --config=configs/demo.py:salt-linear     SALT, w decays linearly after n_KD
    --config=configs/demo.py:salt-ratio      SALT, the KD share of sequences decays after n_KD
    --config=configs/demo.py:salt-adaptive   SALT, KD ends when the student catches the teacher
    --config=configs/demo.py:salt-tokensel   SALT, KD only where the target is in the teacher's top-10

Student runs read the teacher from config.salt.teacher (default runs/demo-teacher).
The settings live in salt_jax/recipes.py (shared with configs/experiments/).
"""

from salt_jax.recipes import demo_run


def get_config(method: str = "baseline"):
    return demo_run(method)
