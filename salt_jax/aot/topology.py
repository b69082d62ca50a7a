"""TPU slices described without a TPU: their devices (from libtpu's topology tables), HBM and peak.

`jax.experimental.topologies.get_topology_desc` returns the devices of any
slice shape libtpu knows, on any host with libtpu installed; programs
compiled for them are real TPU executables (memory and cost analysis work),
they just cannot run here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re

from salt_jax.errors import UserError

GIB = 1024**3

# generation -> (HBM bytes per chip, libtpu's chip config name or ""). Peaks live in salt_jax.model.flops.
# v4 needs "megacore" so that one JAX device is one chip (two TensorCores), as on a v4 VM.
CHIPS = {
    "v4": (32 * GIB, "megacore"),
    "v5e": (16 * GIB, ""),
    "v5p": (95 * GIB, ""),
    "v6e": (32 * GIB, ""),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}
# Cloud TPU accelerator types (gcloud's --accelerator-type) -> chip grids. v4-N and v5p-N count TensorCores
# (two per chip); v5litepod-N and v6e-N count chips.
_CUBES = {8: (2, 2, 1), 16: (2, 2, 2), 32: (2, 2, 4), 64: (2, 4, 4), 128: (4, 4, 4), 256: (4, 4, 8),
          512: (4, 8, 8), 1024: (8, 8, 8), 2048: (8, 8, 16), 4096: (8, 16, 16)}
_PLANES = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: its name ("v5p:4x4x4"), generation, chip grid and devices (one per chip)."""

    name: str
    generation: str
    grid: tuple[int, ...]
    devices: tuple
    hbm_bytes: int  # per chip

    @property
    def chips(self) -> int:
        return len(self.devices)

    @property
    def device_kind(self) -> str:
        return self.devices[0].device_kind


def parse(name: str) -> tuple[str, tuple[int, ...]]:
    """"v5p:4x4x4" or the accelerator type "v5p-128" -> ("v5p", (4, 4, 4)); one clear error for anything else."""
    typed = re.fullmatch(r"\s*([a-z0-9]+)-(\d+)\s*", name.lower())
    if typed:
        generation, n = ALIASES.get(typed.group(1), typed.group(1)), int(typed.group(2))
        grid = _CUBES.get(n) if generation in ("v4", "v5p") else _PLANES.get(n)
        if generation in CHIPS and grid:
            return generation, grid
    m = re.fullmatch(r"\s*([a-z0-9]+):(\d+(?:x\d+){1,2})\s*", name.lower())
    generation = ALIASES.get(m.group(1), m.group(1)) if m else ""
    if not m or generation not in CHIPS:
        raise UserError(f"--topology={name!r}: give GENERATION:GRID with GENERATION one of {', '.join(CHIPS)} and "
                        "the chip grid, e.g. v5p:4x4x4, or an accelerator type (v5p-128, v4-256, v6e-256)")
    return generation, tuple(int(x) for x in m.group(2).split("x"))


# What libtpu reads about the host it runs on when it starts (from the TPU VM's metadata server, or these
# variables). Off a TPU VM it finds none and prints "Failed to find host bounds for accelerator type: WARNING:
# could not determine TPU accelerator type ..." and an `E0000 ... unexpected worker hostname 'WARNING: could
# not determine TPU worker hostnames ...'` error with a source trace on stderr. A slice's description does not
# depend on them (the same devices and coordinates with or without), so describing one says "one worker,
# this host" for the moment libtpu starts, unless they are set.
_WORKER_ENV = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0", "TPU_HOST_BOUNDS": "1,1,1"}


@contextlib.contextmanager
def _this_host_as_a_tpu_worker():
    """The variables of _WORKER_ENV that are unset, set for the block (libtpu reads them as it starts)."""
    added = [k for k in _WORKER_ENV if k not in os.environ]
    os.environ.update({k: _WORKER_ENV[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def tpu_slice(name: str) -> Slice:
    """The slice's devices from libtpu (installed by the [tpu] extra); no TPU is needed."""
    generation, grid = parse(name)
    try:
        from jax.experimental import topologies  # noqa: PLC0415 -- needs libtpu only when used
    except ImportError as e:  # pragma: no cover -- part of jax
        raise UserError(f"jax.experimental.topologies is unavailable ({e})") from None
    # libtpu takes /tmp/libtpu_lockfile for the TPU it drives; describing a slice drives none, so it may
    # load beside a training process (or another compile) on the same host.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    hbm, chip_config = CHIPS[generation]
    kwargs = {"chip_config_name": chip_config} if chip_config else {}
    topology = f"{generation}:{'x'.join(map(str, grid))}"
    try:
        with _this_host_as_a_tpu_worker():
            desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
    except Exception as e:  # noqa: BLE001 -- libtpu missing (RuntimeError) or an unknown shape (various)
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if any(w in text.lower() for w in ("libtpu", "backend", "plugin", "no module")):
            raise UserError(f"--topology={name}: libtpu is needed to describe a TPU slice ({text}); install it "
                            "with pip install -e '.[tpu]'") from None
        raise UserError(f"--topology={name}: libtpu does not know this slice ({text}); use a slice shape Cloud "
                        "TPU offers") from None
    return Slice(topology, generation, grid, tuple(desc.devices), hbm)
