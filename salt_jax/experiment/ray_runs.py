"""The experiment's runs as Ray tasks: python -m salt_jax.experiment --engine=ray [--ray_address=HOST:PORT].

`RayRunner` is a runner for pipeline.run_experiment: it trains a batch of
independent runs (the teachers, the learning-rate sweep, the students) at
once, each as one Ray task with the resources of config.ray_resources
("num_cpus=1" by default; "num_gpus=1" for one GPU per run, "TPU=4" for one
TPU host), in a fresh worker process per run (max_calls=1: no JAX state
carries over). Each task runs the sequential pipeline's
`_train(config, workdir, label)` in the same workdir, so runs resume and are
skipped the same way and the report is the same. A run's log lines go to
`<workdir>/train.log`; this process prints one line per finished run. A
missing token store is built before a batch starts, by the same Ray
cluster, so concurrent runs never build it twice.

On a cluster of several machines every one must see the workdir and the
cache (gs://, s3://, or a shared mount) and have salt_jax installed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import ml_collections

from salt_jax.config import resolved
from salt_jax import paths
from salt_jax.data import ray_engine, store
from salt_jax.errors import UserError

_OWN = ("num_cpus", "num_gpus", "memory")  # Ray's own task options; any other name is a custom resource ("TPU")


def resources(exp: ml_collections.ConfigDict) -> dict:
    """config.ray_resources ("num_cpus=1", "num_gpus=1", "num_cpus=8,TPU=4"; or a dict) as Ray task options."""
    spec = exp.get("ray_resources", "num_cpus=1")
    items = dict(spec) if not isinstance(spec, str) else {}
    for item in filter(None, (x.strip() for x in (spec.split(",") if isinstance(spec, str) else []))):
        name, eq, value = item.partition("=")
        items[name.strip()] = value.strip() if eq else ""
    options: dict = {"resources": {}}
    for name, value in items.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"config.ray_resources: {name}={value!r} is not a number; write NAME=AMOUNT,... "
                            "(num_cpus=1, num_gpus=1, TPU=4)") from None
        if number < 0:
            raise UserError(f"config.ray_resources: {name}={value} must be 0 or more")
        if name in _OWN:
            options[name] = number
        else:
            options["resources"][name] = number
    return options


def _log_to_file(workdir: str):
    """Sends this process's log lines to <workdir>/train.log (appended; a remote workdir gets the file when
    the run ends). Returns a function that finishes it."""
    local = paths.join(workdir, "train.log") if not paths.is_remote(workdir) else tempfile.mktemp(suffix=".log")
    paths.makedirs(workdir)
    handler = logging.FileHandler(local)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("absl", "orbax", "jax._src", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def finish() -> None:
        handler.close()
        if paths.is_remote(workdir):
            target = paths.join(workdir, "train.log")
            with paths.open(target) if paths.exists(target) else open(os.devnull) as fh:
                before = fh.read()
            with open(local, encoding="utf-8") as fh:
                paths.write_atomic(target, before + fh.read())
            os.remove(local)
    return finish


def train_run(config: ml_collections.ConfigDict, workdir: str, label: str) -> dict:
    """One run in a Ray worker: the sequential pipeline's _train, logging to <workdir>/train.log. Returns what
    the driver's progress line says."""
    import jax  # noqa: PLC0415

    from salt_jax.experiment import pipeline  # noqa: PLC0415

    finish = _log_to_file(workdir)
    t0 = time.time()
    try:
        skipped = pipeline._finished(workdir, config.train.steps)
        pipeline._train(config, workdir, label)
        return {"skipped": skipped, "seconds": time.time() - t0,
                "node": ray_engine.ray_module().util.get_node_ip_address(),
                "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}"}
    except BaseException:
        logging.exception("[%s] stopped", label)
        raise
    finally:
        finish()


class RayRunner:
    """Trains each batch of runs as Ray tasks at once (config.ray_resources each); see the module doc."""

    def __init__(self, exp: ml_collections.ConfigDict):
        self.options = resources(exp)
        self.device = ""  # the runs' devices, for the report
        self.concurrent = True  # runs train at once, sharing machines: the report marks their times as such

    def _prepare_data(self, runs) -> None:
        """Builds each missing token store the batch trains on (once, with Ray tasks) before the runs start."""
        seen = set()
        for _, _, config in runs:
            c = resolved(config)  # (a Hugging Face teacher's tokenizer, as the run would use it)
            key = c.data.to_json_best_effort(sort_keys=True)
            if key not in seen:
                seen.add(key)
                store.build_store(c.data, host=(0, 1), engine=ray_engine.RayEngine())

    def __call__(self, runs: list[tuple[str, str, ml_collections.ConfigDict]]) -> None:
        if not runs:
            return
        ray = ray_engine.ray_module()
        self._prepare_data(runs)
        task = ray.remote(max_calls=1)(train_run).options(**self.options)
        pending = {task.remote(config, paths.expand(workdir), label): (label, workdir)
                   for label, workdir, config in runs}
        logging.info("Ray: %s at once as resources allow (%s each)", ", ".join(label for label, _, _ in runs),
                     _describe(self.options))
        try:
            while pending:
                finished, _ = ray.wait(list(pending), num_returns=1)
                label, workdir = pending.pop(finished[0])
                try:
                    out = ray.get(finished[0])
                except ray.exceptions.RayTaskError as e:
                    raise ray_engine.unwrapped(e) from e  # (user errors and preemptions as themselves)
                self.device = self.device or out["device"]
                log = paths.join(workdir, "train.log")
                if out["skipped"]:
                    logging.info("[%s] already finished in %s: skipped", label, workdir)
                else:
                    logging.info("[%s] finished in %.0fs on %s (%d left); log: %s", label, out["seconds"],
                                 out["node"], len(pending), log)
        finally:
            for ref in pending:
                ray.cancel(ref)


def _describe(options: dict) -> str:
    parts = [f"{k}={v:g}" for k, v in options.items() if k != "resources"]
    return ", ".join(parts + [f"{k}={v:g}" for k, v in options["resources"].items()]) or "no resources"
