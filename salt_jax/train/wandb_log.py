"""Weights & Biases beside metrics.jsonl and TensorBoard (config.logging.wandb): the same scalars.

Imported, and wandb with it, only when config.logging.wandb is true, by process 0's
MetricsWriter. Each metrics.jsonl record goes to W&B at its `step` (the W&B step),
keyed by split: "train/loss", "eval/loss", "eval/loss/<corpus>" (a mixture's),
"fewshot/<task>/<metric>"; a nested value is flattened with "/"; null and non-numeric
values are left out. wandb.config holds the resolved config, as config.json does.

Resume. The W&B run id is made once and kept in <workdir>/wandb_run_id, so a
restarted run continues the same W&B run (wandb.init(id=..., resume="allow")). W&B
holds a step once and refuses steps below the last one it has, and a killed process
loses what W&B had not yet written (its `.wandb` file is flushed every ~15 s; the row
of the last step stays open until a later step arrives). So a restarted writer first
asks what W&B holds: online, the server's next step (run.step); offline, the steps in
this run's earlier local `.wandb` files. It then sends metrics.jsonl's kept lines
(up to the restored checkpoint) from that step on, and after that only new steps past
it: no step is sent twice, none is lost. A step W&B already had keeps the values it
got first (the losses are the same after a resume; the timings are the first process's).
"""

from __future__ import annotations

import glob
import json
import math
import numbers
import os
import re
import secrets
import string
import struct
import zlib

import ml_collections

from salt_jax import paths
from salt_jax.errors import UserError


def scalars(split: str, values: dict, prefix: str = "") -> dict[str, float]:
    """{"split/key": value} for the finite numbers of a metrics record (nested dicts flattened with "/")."""
    out = {}
    for key, value in values.items():
        name = f"{prefix or split}/{key}"
        if isinstance(value, dict):
            out.update(scalars(split, value, name))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = value if isinstance(value, int) else float(value)
    return out


def run_id(workdir: str) -> str:
    """This run's W&B id: <workdir>/wandb_run_id, written on first use."""
    path = paths.join(workdir, "wandb_run_id")
    if paths.exists(path):
        with paths.open(path) as fh:
            found = fh.read().strip()
        if found:
            return found
    made = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    paths.write_atomic(path, made + "\n")
    return made


class WandbRun:
    """One W&B run fed from MetricsWriter: `log` each record, `close` at the end."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, kept: list[dict]):
        cfg = config.logging
        try:
            import wandb
        except ImportError:
            raise UserError("config.logging.wandb=true needs wandb: pip install -e '.[wandb]'") from None
        ident = run_id(workdir)
        root = cfg.wandb_dir or os.environ.get("WANDB_DIR") or ("" if paths.is_remote(workdir) else workdir)
        if paths.is_remote(root):
            raise UserError(f"config.logging.wandb_dir={root}: W&B writes its files locally; give a local directory")
        if root:
            os.makedirs(paths.expand(root), exist_ok=True)
        earlier = local_history(root or ".", ident) if cfg.wandb_mode == "offline" else []
        try:
            self.run = wandb.init(
                project=cfg.wandb_project, entity=cfg.wandb_entity or None,
                name=cfg.wandb_name or workdir.rstrip("/").rsplit("/", 1)[-1], id=ident, resume="allow",
                mode=cfg.wandb_mode, dir=paths.expand(root) if root else None,
                tags=[t.strip() for t in cfg.wandb_tags.split(",") if t.strip()] or None,
                config=json.loads(config.to_json_best_effort()), allow_val_change=True, reinit="create_new")
        except wandb.errors.Error as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"config.logging.wandb_mode={cfg.wandb_mode}: W&B cannot start the run ({why}); log in "
                            "(wandb login, or set WANDB_API_KEY) or set config.logging.wandb_mode=offline") from None
        # The first step W&B does not hold yet: online the server says (run.step); offline, the earlier files.
        self.next = max([self.run.step] + [row["_step"] + 1 for row in earlier])
        for record in kept:  # metrics.jsonl's lines up to the restored checkpoint: what W&B lacks of them
            self.log(record["split"], record["step"], record)

    def log(self, split: str, step: int, values: dict) -> None:
        if step < self.next:
            return  # W&B holds this step already (from before a restart)
        row = scalars(split, {k: v for k, v in values.items() if k not in ("step", "split")})
        if row:
            self.run.log(row, step=int(step))  # records of one step merge into one row

    def close(self) -> None:
        self.run.finish()


def local_history(root: str, ident: str) -> list[dict]:
    """The history rows in the `.wandb` files W&B wrote for run `ident` under root/wandb/, oldest first."""
    return [row for path in local_files(root, ident) for row in history(path)]


def local_files(root: str, ident: str) -> list[str]:
    """The `.wandb` files of run `ident` under root/wandb/ (one per process that ran it), oldest first."""
    runs = {}  # (start time, index) -> the file; W&B names a run's directory (offline-)run-DATE_TIME-ID[-INDEX]
    for path in glob.glob(os.path.join(paths.expand(root), "wandb", f"*run-*-{ident}*", f"run-{ident}.wandb")):
        name = re.fullmatch(rf"(?:offline-)?run-(\d{{8}}_\d{{6}})-{re.escape(ident)}(?:-(\d+))?",
                            os.path.basename(os.path.dirname(path)))
        if name:
            runs[name.group(1), int(name.group(2) or 0)] = path
    return [runs[key] for key in sorted(runs)]


def history(path: str) -> list[dict]:
    """The history rows ({"_step": s, "train/loss": ...}) of one `.wandb` file, as far as it is whole."""
    from wandb.proto import wandb_internal_pb2  # noqa: PLC0415

    rows = []
    for data in _log_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


_BLOCK, _HEADER = 32768, 7  # a LevelDB-style log: 32 KiB blocks of (crc32, length, kind) + data chunks


def _log_records(path: str):
    """The records of a W&B transaction log (":W&B" header), stopping at a torn or damaged tail.

    Hand-written because wandb 0.31 no longer ships a Python reader for its own files (the datastore
    moved into its Go core); the format is LevelDB's log format, documented and stable."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b":W&B":
        return
    pos, parts = _HEADER, b""
    while True:
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # zero padding at a block's end
            pos += room
            continue
        if pos + _HEADER > len(data):
            return
        crc, size, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + _HEADER:pos + _HEADER + size]
        if kind not in (1, 2, 3, 4) or len(chunk) < size or zlib.crc32(bytes([kind]) + chunk) != crc:
            return
        pos += _HEADER + size
        parts = chunk if kind in (1, 2) else parts + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            yield parts
