"""How well salt_jax.aot's loop correction holds at the paper's width (docs/tpu.md, correction 1).

Compiles the paper-2.8b baseline step cut to 4 layers for a v5p-128 four times: rolled, with the
layer loop unrolled twice, with the loss loop unrolled twice, and with both loops fully unrolled;
prints the extrapolated cost against the loop-free program's. About 15 minutes on 2 CPU cores.

    python scripts/aot_loop_check.py [--topology=v5p:4x4x4] [--layers=4]
"""

import argparse
import time

import jax

jax.config.update("jax_platforms", "cpu")

from salt_jax import cli  # noqa: E402
from salt_jax import recipes  # noqa: E402
from salt_jax.aot import estimate, programs, topology  # noqa: E402
from salt_jax.model import flops, sharding  # noqa: E402


def main() -> None:
    cli.keep_jax_off_an_absent_tpu()  # (a host with libtpu and no TPU: the CPU, quietly)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topology", default="v5p:4x4x4")
    p.add_argument("--layers", type=int, default=4)
    a = p.parse_args()
    sl = topology.tpu_slice(a.topology)
    peak = flops.peak_flops(sl.device_kind)
    c = recipes.paper_run("baseline", "paper-2.8b")
    c.model.n_layers = a.layers
    c = programs.target_config(c, "tpu")
    progs = programs.Programs(c, sharding.make_mesh(c.mesh, sl.devices), None)
    trips = progs.loops("baseline")
    variants = {"base": programs.Unroll(), "student": programs.Unroll(student=2), "loss": programs.Unroll(loss=2),
                "flat": programs.Unroll(student=trips["student"], loss=trips["loss"])}
    cost = {}
    for name, unroll in variants.items():
        t0 = time.perf_counter()
        cost[name] = estimate.cost_of(progs.lowered("baseline", unroll).compile(), peak)
        print(f"{name}: {cost[name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    total = estimate.extrapolate(cost["base"], cost, trips)
    print(f"loops {trips}: extrapolated / loop-free: FLOPs {total.flops / cost['flat'].flops:.4f}, "
          f"seconds {total.seconds / cost['flat'].seconds:.4f} (compiler estimates)")


if __name__ == "__main__":
    main()
