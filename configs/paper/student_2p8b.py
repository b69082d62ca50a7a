"""The paper's main pair at its scale: a ~2.8B student and a ~1.5B teacher (salt_jax.recipes.paper_run).

    --config=configs/paper/student_2p8b.py:teacher    the teacher (paper-1.5b), trained first
    --config=configs/paper/student_2p8b.py            the baseline student (paper-2.8b)
    --config=configs/paper/student_2p8b.py:salt       SALT: KD for the first 36K of 208K steps
    --config=configs/paper/student_2p8b.py:salt_ds    SALT with teacher-selected KD-phase data

Check a slice before renting it: python -m salt_jax.compile --config=configs/paper/student_2p8b.py:salt
--topology=v5p:4x4x4 (docs/tpu.md). Set --config.data.path to the corpus and --config.salt.teacher to the
teacher run's workdir.
"""

from salt_jax.recipes import paper_run


def get_config(method: str = "baseline"):
    return paper_run(method, "paper-2.8b")
