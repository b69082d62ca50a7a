"""Run outputs: metrics.jsonl (one JSON object per line), TensorBoard events and, with
config.logging.wandb, the same scalars in Weights & Biases (salt_jax.train.wandb_log).

Every line has `step` and `split` ("train" or "eval"). Only process 0 writes.
On resume, lines past the restored step (written by the interrupted run after
its last checkpoint) are dropped, and a fresh start (step 0) starts a fresh
file, so the file always reads as one uninterrupted run. In a gs:// or s3://
workdir (objects cannot be appended to) the file is rewritten whole at every
write, so it is never torn.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math

import jax
import numpy as np

from salt_jax import paths
from salt_jax.model.flops import RunFlops
from salt_jax.train import wandb_log


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null marks a non-finite value
    return value


def read_metrics(path: str) -> list[dict]:
    """All records of a metrics.jsonl (skipping a torn last line)."""
    out = []
    if not paths.exists(path):
        return out
    with paths.open(path) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


# What tensorboardX needs to write events to an object store.
_TB_CLOUD = {"gs": "google.cloud.storage", "s3": "boto3"}


def _tensorboard(workdir: str):
    """A TensorBoard writer for workdir/tensorboard, or None (with a warning) when it cannot write there;
    TensorBoard events are optional, metrics.jsonl is the record."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        logging.warning("tensorboardX is not installed: no TensorBoard events")
        return None
    if paths.is_remote(workdir):
        scheme = workdir.split("://", 1)[0]
        try:
            missing = scheme not in _TB_CLOUD or importlib.util.find_spec(_TB_CLOUD[scheme]) is None
        except ModuleNotFoundError:
            missing = True
        if missing:
            logging.warning("no TensorBoard events in %s: tensorboardX writes %s:// only with %s installed",
                            workdir, scheme, _TB_CLOUD.get(scheme, "(unsupported)"))
            return None
    return SummaryWriter(paths.join(workdir, "tensorboard"))


class MetricsWriter:
    """Appends records to workdir/metrics.jsonl and mirrors scalars to TensorBoard (and W&B, when `config`
    sets config.logging.wandb)."""

    def __init__(self, workdir: str, resume_step: int = 0, config=None):
        self.enabled = jax.process_index() == 0
        self.path = paths.join(workdir, "metrics.jsonl")
        self.remote = paths.is_remote(workdir)
        self._lines: list[str] = []  # a remote file's whole text, rewritten at each write
        self._tb = self._wandb = None
        if not self.enabled:
            return
        kept = []
        if paths.exists(self.path):  # drop what the interrupted run wrote after its checkpoint (and torn lines)
            kept = [r for r in read_metrics(self.path) if resume_step and r.get("step", 0) <= resume_step]
            self._lines = [json.dumps(r) + "\n" for r in kept]
            paths.write_atomic(self.path, "".join(self._lines))
        self._tb = _tensorboard(workdir)
        if config is not None and config.logging.wandb:  # (wandb is imported then, not before)
            self._wandb = wandb_log.WandbRun(config, workdir, kept)

    def write(self, split: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _clean(v) for k, v in values.items()}}
        line = json.dumps(record) + "\n"
        if self.remote:
            self._lines.append(line)
            paths.write_atomic(self.path, "".join(self._lines))
        else:
            with open(self.path, "a") as fh:
                fh.write(line)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log(split, int(step), record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


def eval_line(totals: dict[str, dict], mixture: dict[str, float] | None = None) -> dict:
    """One metrics.jsonl eval line from the held-out sums ({corpus: {"loss_sum", "correct", "tokens"}}, one corpus
    keyed ""): `loss` (nats/token) and `accuracy`, over its tokens.

    A mixture ({name: weight}) also gets `loss/<name>`, `accuracy/<name>` and
    `tokens/<name>` per corpus (flat keys, as few-shot's "task/metric": TensorBoard
    and W&B show them as eval/loss/<name>), and its `loss` and `accuracy` are the
    corpora's weighted by the mixture's weights, the expected loss of the
    distribution trained on (pooling tokens would weight corpora by the size of
    their held-out sets instead).
    """
    per = {name: {"loss": t["loss_sum"] / max(t["tokens"], 1.0), "accuracy": t["correct"] / max(t["tokens"], 1.0),
                  "tokens": t["tokens"]} for name, t in totals.items()}
    if mixture is None:
        return per[""]
    line = {"loss": float(sum(w * per[name]["loss"] for name, w in mixture.items())),
            "accuracy": float(sum(w * per[name]["accuracy"] for name, w in mixture.items())),
            "tokens": float(sum(p["tokens"] for p in per.values()))}
    for name, p in per.items():
        line.update({f"{key}/{name}": value for key, value in p.items()})
    return line


def train_line(records: list[dict], seconds: float, tokens_per_step: int, timed_steps: int,
               flops: RunFlops | None = None) -> dict:
    """One metrics.jsonl train line from the per-step sums of a log interval (its window).

    Every field but `learning_rate` (the last step's) is over the window's `window_steps` steps, not the
    logged step alone: losses and accuracy per token, `kd_weight` and `grad_norm` the mean per step.
    Steps with and without the teacher may be mixed (the interval of the switch): `kd_steps` says how
    many had it, KD-only quantities (`kd_loss`, `teacher_ntp_loss`) average over those steps and are null
    when there were none, so `kd_weight` 0.175 with `kd_steps` 7 of 20 is w = 0.5 on 7 steps.
    Across tokenizers (ALM) `kd_loss` is the mean divergence per aligned chunk, `teacher_ntp_loss` the
    teacher's loss on the aligned text per student token, and the line adds `aligned_fraction` (the student's
    targets inside aligned chunks), `truncated_chunks`, `unencodable_pieces` and `long_chunks` (salt_jax.data.alignment).
    `flops` adds model TFLOP/s and MFU, for the student alone and with the
    teacher's forward (salt_jax.model.flops.RunFlops).
    """
    host = jax.device_get(records)
    total = lambda key, rs=host: float(np.sum([r[key] for r in rs]))  # noqa: E731
    tokens = max(total("tokens"), 1.0)
    kd_steps = [r for r in host if "kd_sum" in r]
    kd_tokens = max(total("tokens", kd_steps), 1.0)
    finite_norms = [float(r["grad_norm"]) for r in host if np.isfinite(r["grad_norm"])]
    tokens_per_sec = timed_steps * tokens_per_step / seconds if timed_steps else None
    line = {
        "loss": total("loss_sum") / tokens,
        "ntp_loss": total("ntp_sum") / tokens,
        "kd_loss": total("kd_sum", kd_steps) / kd_tokens if kd_steps else None,
        "teacher_ntp_loss": total("teacher_ntp_sum", kd_steps) / kd_tokens if kd_steps else None,
        "kd_weight": float(np.mean([float(r.get("kd_weight", 0.0)) for r in host])),  # teacher-free steps: 0
        "window_steps": len(host),
        "kd_steps": len(kd_steps),
        "kd_token_fraction": (total("kd_tokens", kd_steps) / tokens) if kd_steps else 0.0,
        "accuracy": total("correct") / tokens,
        "learning_rate": float(host[-1]["learning_rate"]),
        "grad_norm": float(np.mean(finite_norms)) if finite_norms else None,
        "skipped_steps": int(sum(float(r.get("skipped", 0.0)) for r in host)),
        "tokens_per_sec": tokens_per_sec,
        "steps_per_sec": timed_steps / seconds if timed_steps else None,
    }
    aligned = [r for r in kd_steps if "aligned_tokens" in r]
    if aligned:  # a teacher with another tokenizer (salt_jax.kd.alm): how much of the text its chunks cover
        line.update(aligned_fraction=total("aligned_tokens", aligned) / max(total("tokens", aligned), 1.0),
                    truncated_chunks=int(total("truncated_chunks", aligned)),
                    unencodable_pieces=int(total("unencodable_pieces", aligned)),
                    long_chunks=int(total("long_chunks", aligned)))
    if flops is None:
        return line | {"model_tflops_per_sec": None, "mfu": None, "mfu_with_teacher": None}
    return line | flops.throughput(tokens_per_sec, len(kd_steps) / len(host))
