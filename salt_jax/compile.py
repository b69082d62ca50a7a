"""Compile a run for a TPU slice from any machine: does it fit, and what should a step cost.

    python -m salt_jax.compile --config=configs/paper/student_2p8b.py:salt --topology=v5p-128 \
        [--config.model.remat=save_dots]
    python -m salt_jax.compile --config=configs/paper/student_2p8b.py:salt --topology=v5p:4x4x4 --search

Needs libtpu (pip install -e '.[tpu]'), not a TPU: the run's programs (the
KD step, the teacher-free step and SALT_DS's scoring pass, as the method uses
them) are built from abstract shapes and compiled ahead of time for the
slice's chips. Prints a table and writes the report as JSON (--out). Memory
per chip is the compiler's accounting (a program that does not fit fails to
compile); step times and MFU are the compiler's cost model with the
corrections in salt_jax/aot/estimate.py: compiler estimates, not measurements.
Exits 0 when every program fits, 1 when one does not, 2 on a usage error.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from salt_jax import paths
from salt_jax.cli import fail, flags_parser, keep_jax_off_an_absent_tpu, load_config, own_flags_help, setup_logging
from salt_jax.config import run_help
from salt_jax.errors import UserError

GIB = 1024**3

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice: an accelerator type (v5p-128, v6e-256, ...) or "
                                "GENERATION:GRID (v5p:4x4x4, v4:4x4x8, v6e:16x16, ...).")
_OUT = flags.DEFINE_string("out", "", "JSON report path; '' = compile-<config>-<topology>.json here.")
_SEARCH = flags.DEFINE_bool("search", False, "Try mesh shapes x remat policies; report the fastest that fits.")
_REMATS = flags.DEFINE_list("remats", ["full", "save_out_proj", "save_dots"], "Remat policies --search tries.")
_ESTIMATE = flags.DEFINE_bool("estimate", True, "Also compile the loop-unrolled variants the step-time estimate "
                              "needs (--noestimate: memory and fit only, one compile per program).")
_PROGRAMS = flags.DEFINE_list("programs", [], "Compile only these of the run's programs (kd, baseline, scoring).")


def _gib(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ms(x) -> str:
    return "unavailable" if x is None else f"{1e3 * x:.4g} ms"


def print_report(r: dict) -> None:
    print(f"\n{r['student']} ({r['method']}{', teacher ' + r['teacher'] if r['teacher'] else ''}) on "
          f"{r['topology']} ({r['chips']} x {r['device_kind']}, {r['hbm_gib_per_chip']} GiB HBM each), mesh "
          f"{r['mesh']}, batch {r['batch']} x {r['seq_len']}, {r['dtype']}, remat {r['remat']}, "
          f"{r['attention']} attention, {r['loss']} loss")
    print("| program | fits | GiB/chip peak (args / out / temp) | compile | est. step | est. MFU |")
    print("|---|---|---|---|---|---|")
    for name, p in r["programs"].items():
        m = {k: v / GIB for k, v in (p.get("memory_bytes") or {}).items()}
        e = p.get("estimate") or {}
        if not m:
            print(f"| {name} | no | {p['compiler']} | | | |")
            continue
        mfu = f"{100 * e['mfu']:.1f}%" if e.get("mfu") else "-"
        print(f"| {name} | {'yes' if p['fits'] else 'no'} | {_gib(m['peak'])} ({_gib(m['argument'])} / "
              f"{_gib(m['output'])} / {_gib(m['temp'])}) | {p['compile_seconds']:.0f} s | "
              f"{_ms(e.get('step_seconds')) if e else '-'} | {mfu} |")
    estimated = any(p.get("estimate") for p in r["programs"].values())
    if r.get("kd_over_baseline_flop_model") and {"kd", "baseline"} <= set(r["programs"]):
        est = (r["kd_over_baseline_estimate"] or "unavailable") if estimated else "not estimated (--noestimate)"
        print(f"KD step / baseline step: {est} (estimate) vs {r['kd_over_baseline_flop_model']} (FLOP model)")
    if r.get("run_estimate"):
        h = r["run_estimate"]
        print(f"run: {h['steps']} steps ({h['kd_steps']} with the teacher) ~ {h['hours']} h; the baseline's "
              f"{h['steps']} steps ~ {h['baseline_hours']} h")
    print("(times and MFU: compiler estimates, not measurements)")


def _default_out(config_arg: str, topology: str) -> str:
    name = os.path.basename(config_arg.split(":")[0]).removesuffix(".py")
    method = config_arg.split(":")[1] if ":" in config_arg else ""
    return f"compile-{name}{'-' + method if method else ''}-{topology.replace(':', '-')}.json"


def _main(argv) -> None:
    del argv
    keep_jax_off_an_absent_tpu()
    setup_logging()
    config = load_config(_CONFIG)
    if not _TOPOLOGY.value:
        fail("--topology is required, e.g. --topology=v5p:4x4x4 (a v5p-128 slice)")
    from salt_jax.aot import check, topology  # noqa: PLC0415 -- after the platform is pinned in main()

    try:
        sl = topology.tpu_slice(_TOPOLOGY.value)
        if _SEARCH.value:
            result = check.search(config, sl, tuple(_REMATS.value))
            report = result.get("report")
            for row in result["candidates"]:
                print(f"  mesh {row['mesh']} remat {row['remat']}: "
                      + (row["error"] if "error" in row else
                         f"{'fits' if row['fits'] else 'does not fit'}, peak {_gib(row['peak_gib'])} GiB, "
                         f"step {_ms(row['step_seconds'])}"))
            if report is None:
                fail(f"--search: no candidate fits {sl.name}; use a larger slice or a smaller batch")
        else:
            report = check.check(config, sl, _ESTIMATE.value, tuple(_PROGRAMS.value))
            result = report
    except UserError as e:
        fail(str(e))
    print_report(report)
    out = _OUT.value or _default_out(_config_arg(), _TOPOLOGY.value)
    paths.write_atomic(out, json.dumps(result, indent=1, default=str))
    logging.info("report written to %s", out)
    if not report["fits"]:
        sys.exit(1)


def _config_arg() -> str:
    for a in sys.argv[1:]:
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return "config"


def main() -> None:
    # Compile on the CPU backend: the programs target the slice's chips, not this host's devices (on a TPU VM
    # the TPU may be busy training).
    import jax  # noqa: PLC0415

    jax.config.update("jax_platforms", "cpu")
    app.run(_main, flags_parser=flags_parser(lambda: run_help(__doc__, own_flags_help()), "salt-compile"))


if __name__ == "__main__":
    main()
