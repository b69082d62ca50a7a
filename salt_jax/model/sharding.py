"""Device mesh from config and the logical-axis rules that place arrays on it.

Mesh axes are ("data", "fsdp", "tensor"): batch is split over data*fsdp,
parameters are split over fsdp (their d_model axis) and tensor (heads / mlp /
vocab). Axes use GSPMD's Auto mode, so XLA inserts the collectives.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from salt_jax.errors import UserError, check

MESH_AXES = ("data", "fsdp", "tensor")
# config.salt.teacher_sharding: a frozen model's parameters laid out by the logical rules (`shardings_for`) or
# whole on every device (`replicated`).
PARAM_LAYOUTS = ("sharded", "replicated")
BATCH_AXES = ("data", "fsdp")  # the mesh axes the global batch is split over

# Logical axis name -> mesh axes. Parameters: vocab, embed, heads, kv_heads,
# head_dim, mlp, norm, layers. Activations: batch, length, act_*.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def check_sizes(mesh_cfg: ml_collections.ConfigDict) -> list[int]:
    """The config's (data, fsdp, tensor) sizes, checked without the devices: positive, or one of them -1."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    check(sizes.count(-1) <= 1, "config.mesh: at most one of data/fsdp/tensor may be -1")
    for a, s in zip(MESH_AXES, sizes):
        check(s == -1 or s >= 1, f"config.mesh.{a}={s}: sizes must be positive or -1")
    return sizes


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, n_devices: int) -> tuple[int, int, int]:
    """Resolves the (data, fsdp, tensor) sizes; one size of -1 takes the remaining devices."""
    sizes = check_sizes(mesh_cfg)
    free = [i for i, s in enumerate(sizes) if s == -1]
    known = math.prod(s for s in sizes if s != -1)
    if free:
        check(n_devices % known == 0,
              f"config.mesh: {n_devices} devices are not divisible by the fixed axes' product {known}; "
              "change config.mesh so the sizes divide the device count")
        sizes[free[0]] = n_devices // known
    check(math.prod(sizes) == n_devices,
          f"config.mesh: data*fsdp*tensor = {math.prod(sizes)} but {n_devices} devices are available; "
          "set one axis to -1 or make the product equal the device count")
    return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A Mesh over `devices` (default: all; or a TPU topology's, to compile for it) with the config's sizes.

    On TPUs the axes are laid onto the chips' physical torus (jax.make_mesh), as
    a real pod lays them out; a shape the torus cannot hold is one clear error
    that names shapes it can.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    try:
        return _physical_mesh(shape, devices)
    except (AssertionError, ValueError, NotImplementedError) as e:
        if devices[0].platform != "tpu":  # CPU / GPU devices (or a subset of them): any order is as good
            return Mesh(np.array(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        works = [s for s in _alternatives(shape) if _lays_out(s, devices)][:3]
        raise UserError(f"config.mesh: (data, fsdp, tensor) = {shape} does not fit the physical layout of the "
                        f"{len(devices)} {devices[0].device_kind} chips ({why}); shapes that do: "
                        f"{', '.join(str(s) for s in works) or 'none of the nearby ones'}") from None


def _physical_mesh(shape: tuple[int, ...], devices) -> Mesh:
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _lays_out(shape: tuple[int, ...], devices) -> bool:
    try:
        _physical_mesh(shape, devices)
        return True
    except (AssertionError, ValueError, NotImplementedError):
        return False


def _alternatives(shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Shapes with the same device count and data axis, moving factors of 2 between fsdp and tensor."""
    data, fsdp, tensor = shape
    out = []
    for factor in (2, 4, 8, 16):
        if fsdp % factor == 0:
            out.append((data, fsdp // factor, tensor * factor))
        if tensor % factor == 0:
            out.append((data, fsdp * factor, tensor // factor))
    return sorted(out, key=lambda s: abs(s[2] - tensor))


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops mesh axes from dimensions they do not divide (those dims are replicated)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = []
        for name in names:
            if dim % (math.prod(mesh.shape[n] for n in kept) * mesh.shape[name]) == 0:
                kept.append(name)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def shardings_for(boxed_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings for an abstract tree whose leaves may be nn.Partitioned boxes.

    Unboxed leaves (step counters, scalars) are replicated.
    """
    logical = nn.get_partition_spec(boxed_tree)
    unboxed = nn.meta.unbox(boxed_tree)

    def one(spec, leaf):
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec else P()
        return NamedSharding(mesh, _fit(mesh_spec, leaf.shape, mesh))

    return jax.tree.map(one, logical, unboxed, is_leaf=lambda x: isinstance(x, P))


@contextlib.contextmanager
def on_mesh(mesh: Mesh):
    """Runs the block under `mesh` and LOGICAL_RULES, so the model's logical activation constraints
    resolve to mesh axes: wrap every call of a jitted function over model code in it."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over data*fsdp, columns (sequence) whole."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch(batch_size: int, mesh: Mesh, field: str = "config.data.batch_size") -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % n:
        raise UserError(f"{field}={batch_size} is not divisible by the mesh's data*fsdp={n}; "
                        f"use a multiple of {n}")
