"""salt_jax: SALT (small-model-aided large-model training) in JAX/Flax.

The subpackages follow the data flow, and imports point only down this list:

    data/        corpus sources -> tokenizer -> token store -> step-indexed batches
    model/       the Transformer, attention kernels, sharding, presets, FLOP count, checkpoints
    hf/          Hugging Face interop (import / export); never imports kd/ or train/
    kd/          the method table, KD losses and the SALT objective, schedules, teacher, SALT_DS selection
    config.py    the run config (every field, one comment each) and its validation
    train/       state, optimizer, the fused teacher+student step, the loop and its hooks, faults, metrics
    experiment/  the comparison pipeline and its report
    aot/         ahead-of-time compilation for TPU slices: fits or not, the compiler's cost estimate

errors.py (UserError) is shared by all. Entry points: `python -m salt_jax.main`
(one run), `salt_jax.experiment`, `salt_jax.hf`, `salt_jax.prepare` (the token store ahead
of training), `salt_jax.bench` and `salt_jax.compile` (a run compiled for a TPU slice).
"""

import glob as _glob
import importlib.util as _importlib_util
import os as _os


def _keep_jax_off_an_absent_tpu() -> None:
    """A host with libtpu installed (the [tpu] and [test] extras) but no TPU: pin JAX to the CPU.

    Otherwise JAX tries the TPU backend first; it fails (after a page of libtpu warnings, holding
    /tmp/libtpu_lockfile) and falls back to the CPU anyway. A TPU VM (/dev/accel*, /dev/vfio), a GPU
    plugin, or an explicit JAX_PLATFORMS is left alone. Compiling for TPU slices (salt_jax.compile) needs
    only libtpu, not the TPU backend.
    """
    if _os.environ.get("JAX_PLATFORMS") or _importlib_util.find_spec("libtpu") is None:
        return
    if _glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"):
        return
    if any(_importlib_util.find_spec(p) is not None for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                               "jax_rocm7_plugin")):
        return
    _os.environ["JAX_PLATFORMS"] = "cpu"


_keep_jax_off_an_absent_tpu()
