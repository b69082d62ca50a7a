"""The comparison experiment from the command line.

    python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/demo
    python -m salt_jax.experiment --config=configs/experiments/ablations.py --workdir=runs/ablations --dry_run
    python -m salt_jax.experiment --config=configs/experiments/repro.py --workdir=runs/repro --engine=ray
    python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/demo --horizons=1,2,4

Trains the teacher, then every method and seed (each an ordinary, resumable run
in its own directory), then writes report.md, results.json and the plots. The
same command resumes an interrupted experiment. --dry_run checks every run's
config and prints the runs it would train, training nothing. --engine=ray
trains the independent runs at once as Ray tasks (config.ray_resources each),
on a local Ray or the cluster at --ray_address; same runs, same report.
--horizons=1,2,4 runs the experiment at those multiples of the students' steps
with the 1x teacher fixed (salt_jax.experiment.horizon), then writes
horizon.md and horizon.png beside the 1x report.
"""

from __future__ import annotations

import copy
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from salt_jax import paths
from salt_jax.cli import (fail, flags_parser, interrupted, keep_jax_off_an_absent_tpu, load_config, own_flags_help,
                          setup_logging)
from salt_jax.errors import INTERRUPTED_STATUS, UserError
from salt_jax.experiment import horizon
from salt_jax.experiment.pipeline import plan, run_experiment, train_in_order
from salt_jax import distributed
from salt_jax.train import faults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/experiments/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all runs and the report.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Check every run's config and print the runs (label, workdir, "
                             "model, steps); train nothing.")
_ENGINE = flags.DEFINE_enum("engine", "local", ["local", "ray"], "Where the runs train: local = one after the "
                            "other in this process; ray = each batch of independent runs at once, as Ray tasks with "
                            "config.ray_resources each (pip install -e \".[ray]\").")
_HORIZONS = flags.DEFINE_string("horizons", "1", "Comma-separated multiples of the students' steps to run the "
                                "experiment at, the 1x teacher fixed (e.g. 1,2,4); more than 1 also writes "
                                "horizon.md and horizon.png in --workdir.")
_RAY_ADDRESS = flags.DEFINE_string("ray_address", "", "With --engine=ray: the Ray cluster to run on (HOST:PORT of its "
                                   "head, as `ray start --head` prints, or 'auto'); empty = a local Ray.")


def _ray_runner(exp, workdir: str):
    """Ray joined (or started) for the runs: a RayRunner, after the configs are checked."""
    from salt_jax.data import ray_engine  # noqa: PLC0415 -- Ray is an extra, imported only for --engine=ray
    from salt_jax.experiment import ray_runs  # noqa: PLC0415

    plan(exp, workdir)
    runner = ray_runs.RayRunner(exp)  # (config.ray_resources checked)
    ray_engine.connect(_RAY_ADDRESS.value, log_to_driver=False)  # a run's lines go to its train.log
    nodes, elsewhere = ray_engine.machines()
    if elsewhere and not paths.is_remote(workdir):
        logging.warning("%d of the Ray cluster's %d machines are not this one: %s and the token cache must be on "
                        "storage they all see (a shared mount, or gs:// / s3://)", elsewhere, nodes, workdir)
    return runner


def _main(argv) -> None:
    del argv
    keep_jax_off_an_absent_tpu()
    setup_logging()
    exp = load_config(_CONFIG)
    if not _WORKDIR.value:
        fail("--workdir is required: the directory for the experiment's runs and report")
    try:
        studies = horizon.experiments(exp, _WORKDIR.value, horizon.parse(_HORIZONS.value))
    except UserError as e:
        fail(str(e))
    if _DRY_RUN.value:
        try:
            runs = [run for h, workdir, e in studies for run in _planned(h, workdir, e)]
        except UserError as e:
            fail(str(e))
        for label, workdir, c in runs:
            print(f"{label}: {workdir} | {c.model.preset} | {c.salt.method} | {c.train.steps} steps | batch "
                  f"{c.data.batch_size} x {c.data.seq_len}", flush=True)
        print(f"{len(runs)} runs; nothing trained (--dry_run)", flush=True)
        return
    try:
        runner = train_in_order
        if _ENGINE.value == "ray":
            studies = horizon.experiments(exp, paths.expand(_WORKDIR.value), [h for h, _, _ in studies])
            runner = _ray_runner(exp, studies[0][1])  # (a Ray worker's current directory may not be this one)
        else:
            distributed.initialize()
        done = {h: run_experiment(e, workdir, runner) for h, workdir, e in studies}
        results = done[1]
        if len(done) > 1:
            _write_horizons(done, studies[0][1])
    except UserError as e:
        fail(str(e))
    except faults.Preempted as e:  # every finished run and the stopped run's checkpoint are kept
        logging.info("%s", e)
        if isinstance(e, faults.Interrupted):
            sys.exit(INTERRUPTED_STATUS)
        return  # a preemption notice: exit 0
    except KeyboardInterrupt:
        interrupted("Ctrl-C outside a training run; every finished run and checkpoint is kept, and the same "
                    "command resumes")
    logging.info("%s", results["conclusion"])
    print(f"report: {paths.join(paths.expand(_WORKDIR.value), 'report.md')}", file=sys.stdout, flush=True)


def _planned(h: int, workdir: str, e) -> list:
    """The runs of horizon `h` (a longer horizon's teacher is the 1x one, maybe not trained yet)."""
    if h > 1 and not paths.exists(paths.join(e.teacher_path, "checkpoints")):
        e = copy.deepcopy(e)
        e.teacher_path = ""  # (planned as if it trained its own, which is then left out)
        return [run for run in plan(e, workdir) if run[0] != "teacher"]
    return plan(e, workdir)


def _write_horizons(results: dict, workdir: str) -> None:
    rows = horizon.summary(results)
    command = "python -m salt_jax.experiment " + " ".join(a for a in sys.argv[1:] if not a.startswith("--engine"))
    horizon.plot(rows, workdir)
    paths.write_atomic(paths.join(workdir, "horizon.md"), horizon.markdown(rows, command))
    print(f"horizon study: {paths.join(paths.expand(workdir), 'horizon.md')}", file=sys.stdout, flush=True)


def main() -> None:
    app.run(_main, flags_parser=flags_parser(
        lambda: "\n".join([(__doc__ or "").strip(), "", "flags:", *own_flags_help()]), "salt-experiment"))


if __name__ == "__main__":
    main()
