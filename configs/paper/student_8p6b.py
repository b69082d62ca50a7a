"""The paper's larger pair: a ~8.6B student and a ~2.8B teacher (salt_jax.recipes.paper_run).

    --config=configs/paper/student_8p6b.py:teacher    the teacher (paper-2.8b; the 2.8B baseline serves)
    --config=configs/paper/student_8p6b.py            the baseline student (paper-8.6b)
    --config=configs/paper/student_8p6b.py:salt       SALT: KD for the first 36K of 208K steps
    --config=configs/paper/student_8p6b.py:salt_ds    SALT with teacher-selected KD-phase data

Check a slice first: python -m salt_jax.compile --config=configs/paper/student_8p6b.py:salt --topology=v5p:4x4x4.
"""

from salt_jax.recipes import paper_run


def get_config(method: str = "baseline"):
    return paper_run(method, "paper-8.6b")
