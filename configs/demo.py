"""CPU demo on the standard library: the demo teacher, and the demo student under each method.

    --config=configs/demo.py                 baseline student (demo-student, ~1.5M parameters)
    --config=configs/demo.py:teacher         the teacher (demo-teacher, ~0.4M parameters)
    --config=configs/demo.py:rkd             KD for the whole run
    --config=configs/demo.py:salt            SALT, step transition at n_KD
    --config=configs/demo.py:salt-linear     SALT, w decays linearly after n_KD
    --config=configs/demo.py:salt-ratio      SALT, the KD share of sequences decays after n_KD
    --config=configs/demo.py:salt-adaptive   SALT, KD ends when the student catches the teacher
    --config=configs/demo.py:salt-tokensel   SALT, KD only where the target is in the teacher's top-10

Student runs read the teacher from config.salt.teacher (default runs/demo-teacher).
"""

from salt_jax.config import base_config, set_method


def get_config(method: str = "baseline"):
    c = base_config("demo-teacher" if method == "teacher" else "demo-student")
    c.data.tokenizer.kind = "sentencepiece"
    c.data.tokenizer.vocab_size = 2048  # equals both presets' vocab_size
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.data.eval_batches = 16
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 50
    c.train.steps = 600
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.checkpoint_every = 200
    c.salt.teacher = "runs/demo-teacher"
    set_method(c, method)
    return c
