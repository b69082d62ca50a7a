"""`import salt_jax` and a whole training run never import TensorFlow."""

import subprocess
import sys

from conftest import REPO

_SCRIPT = """
import sys, tempfile
sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
import salt_jax, salt_jax.main, salt_jax.train.loop
from salt_jax.config import base_config
c = base_config("test-tiny")
c.data.max_files, c.data.seq_len, c.data.batch_size, c.data.cache_dir = 60, 32, 8, sys.argv[1]
c.train.steps, c.train.heldout_every, c.train.checkpoint_every, c.train.progress = 3, 3, 3, False
summary = salt_jax.train.loop.run(c, tempfile.mkdtemp())
bad = sorted(m for m, mod in sys.modules.items()
       if mod is not None and m.split(".")[0] in ("tensorflow", "seqio", "tensorflow_datasets"))
print("LOADED", bad, summary["final_eval_loss"])
"""


def test_training_runs_without_tensorflow(cache_dir):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, cache_dir], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOADED")][-1]
    assert line.startswith("LOADED [] "), line
