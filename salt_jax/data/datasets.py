"""Dataset sources: a seqio Task, a TFDS dataset by name, ArrayRecord files via grain, a Hugging Face dataset.

Each yields raw text documents per split ("train", "heldout") into the same
tokenize -> pack -> token cache path as the built-in corpus (salt_jax.data.store).
TensorFlow, seqio, TFDS, grain and `datasets` are imported here, lazily, only
when such a source is configured: the training path itself never needs them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import importlib
import os
from typing import Iterator

import ml_collections

from salt_jax import paths
from salt_jax.data.documents import NO_FIELD, UNDECODABLE, ReadStats, Source, as_text, in_heldout
from salt_jax.errors import UserError

FIELD_CHECK = 1000  # as for JSON-lines files (salt_jax.data.files): none of a split's first 1000 examples with the
# text field is a wrong config.data.text_field (one line); an example without it among others is skipped and counted


def _require(module: str, source: str):
    """Imports an optional dependency of a data source, or says which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"tensorflow": "tensorflow", "tensorflow_datasets": "tensorflow-datasets", "seqio": "seqio",
                   "grain.python": "grain", "datasets": "datasets"}[module]
        raise UserError(f"config.data.source={source} needs the {package} package, which is not installed; "
                        f"pip install {package} (see setup.py for the tested version)") from None


def _quiet_tensorflow(source: str):
    """Imports TensorFlow for data reading only: quiet, and kept off any GPU JAX needs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = _require("tensorflow", source)

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: devices can no longer change
        pass
    return tf


def _text_of(example, field: str):
    """The document text of one example (a dict with `field`, or a bare string / bytes). A value that is
    not text (null, a number) is returned as it is, a dict without `field` as NO_FIELD, bytes that are not
    UTF-8 as UNDECODABLE: the source skips and counts them."""
    if isinstance(example, dict):
        if field not in example:
            return NO_FIELD
        example = example[field]
    if hasattr(example, "numpy"):
        example = example.numpy()
    if hasattr(example, "item") and not isinstance(example, (bytes, str)):
        example = example.item()
    return as_text(example)


class _DatasetSource(Source):
    """A source whose read units are examples: each is one document (its `text_field`)."""

    _missing = _first_fields = None  # (set by documents)

    def documents(self, split: str, stats: ReadStats | None = None) -> Iterator[str]:
        """Source.documents, stopping with one line when none of the split's first FIELD_CHECK examples (or all
        of them, if fewer) has the text field: a wrong config.data.text_field, not a few odd records."""
        self._missing, self._first_fields = 0, None  # examples without the field, while none had it
        yield from super().documents(split, stats)
        if self._missing:
            self._wrong_field(f"none of its {self._missing} examples")

    def _texts(self, example, split: str) -> list[str]:
        text = _text_of(example, self.text_field)
        if self._missing is not None:
            if text is NO_FIELD:
                self._missing += 1
                self._first_fields = self._first_fields or sorted(example)
                if self._missing >= FIELD_CHECK:
                    self._wrong_field(f"none of its first {self._missing} examples")
            elif text is not UNDECODABLE:  # (which tells nothing of the field)
                self._missing = None  # the field is right: the rest are only counted
        return [text]

    def _wrong_field(self, which: str) -> None:
        raise UserError(f"config.data.text_field={self.text_field!r}: {which} has it (the first one's fields: "
                        f"{', '.join(self._first_fields)}); set text_field to the one holding the text")


class TFDSSource(_DatasetSource):
    """A TFDS dataset by name (registered, or prepared under data_dir), read in order."""

    kind = "tfds"

    def __init__(self, d: ml_collections.ConfigDict):
        _quiet_tensorflow("tfds")
        tfds = _require("tensorflow_datasets", "tfds")

        self.text_field, self.splits = d.text_field, {"train": d.train_split, "heldout": d.heldout_split}
        try:
            self.builder = tfds.builder(d.tfds_name, data_dir=d.tfds_data_dir or None)
        except Exception as e:  # noqa: BLE001 -- tfds raises DatasetNotFoundError and friends
            raise UserError(f"config.data.tfds_name={d.tfds_name!r}: no such TFDS dataset "
                            f"({type(e).__name__}); check the name or config.data.tfds_data_dir") from None
        info_splits = set(self.builder.info.splits.keys())
        for ours, name in self.splits.items():
            if name.split("[")[0] not in info_splits:
                raise UserError(f"config.data.{'train_split' if ours == 'train' else 'heldout_split'}={name!r}: "
                                f"{d.tfds_name} has splits {sorted(info_splits)}")
        self.name = d.tfds_name

    def fingerprint(self) -> str:
        info = self.builder.info
        key = f"tfds:{self.name}:{info.version}:{self.splits}:{self.text_field}:" + ",".join(
            f"{k}={v.num_examples}" for k, v in sorted(info.splits.items()))
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _units(self, split: str) -> Iterator:
        ds = self.builder.as_dataset(split=self.splits[split], shuffle_files=False)
        yield from ds.as_numpy_iterator()


class SeqioSource(_DatasetSource):
    """The raw text of a registered seqio Task's source (before its preprocessors and vocabulary)."""

    kind = "seqio"

    def __init__(self, d: ml_collections.ConfigDict):
        _quiet_tensorflow("seqio")
        seqio = _require("seqio", "seqio")

        for module in filter(None, (m.strip() for m in d.seqio_module.split(","))):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise UserError(f"config.data.seqio_module={module!r}: cannot import it ({e}); it must be "
                                "importable (on PYTHONPATH) and register the task") from None
        try:
            self.task = seqio.TaskRegistry.get(d.seqio_task)
        except ValueError:
            kind = "a mixture (give one of its tasks)" if d.seqio_task in seqio.MixtureRegistry.names() else \
                "not a registered seqio task"
            raise UserError(f"config.data.seqio_task={d.seqio_task!r}: {kind}; set config.data.seqio_module to "
                            "the module that registers it") from None
        self.text_field, self.splits = d.text_field, {"train": d.train_split, "heldout": d.heldout_split}
        for ours, name in self.splits.items():
            if name not in self.task.splits:
                raise UserError(f"config.data.{'train_split' if ours == 'train' else 'heldout_split'}={name!r}: "
                                f"task {d.seqio_task} has splits {list(self.task.splits)}")
        self.name = d.seqio_task

    def fingerprint(self) -> str:
        src = self.task.source
        files = []
        for split in self.splits.values():
            try:
                files += [f"{f}:{os.path.getsize(f)}" for f in src.list_shards(split) if os.path.exists(f)]
            except (AttributeError, NotImplementedError):
                pass
        key = f"seqio:{self.name}:{self.splits}:{self.text_field}:{files}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _units(self, split: str) -> Iterator:
        ds = self.task.source.get_dataset(split=self.splits[split], shuffle=False)
        yield from ds.as_numpy_iterator()


class ArrayRecordSource(_DatasetSource):
    """ArrayRecord files read through grain; each record is UTF-8 text or a JSON object with text_field."""

    kind = "arrayrecord"

    def __init__(self, d: ml_collections.ConfigDict):
        grain = _require("grain.python", "arrayrecord")
        self.text_field, self.fraction = d.text_field, d.heldout_fraction
        self.paths = {"train": self._expand(d.path, "config.data.path"),
                      "heldout": self._expand(d.heldout_path, "config.data.heldout_path") if d.heldout_path else []}
        self.grain = grain

    @staticmethod
    def _expand(patterns: str, field: str) -> list[str]:
        if not patterns:
            raise UserError(f"{field} is empty; give the ArrayRecord files for config.data.source=arrayrecord")
        files = []
        for p in filter(None, (x.strip() for x in patterns.split(","))):
            found = sorted(glob.glob(os.path.expanduser(p)))
            if not found:
                raise UserError(f"{field}: no file matches {p!r}")
            files += found
        return files

    def fingerprint(self) -> str:
        key = f"arrayrecord:{self.text_field}:{self.fraction}:" + ";".join(
            f"{s}={f}:{os.path.getsize(f)}" for s, fs in self.paths.items() for f in fs)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _records(self, files: list[str]) -> Iterator[tuple[str, int, bytes]]:
        for f in files:
            try:
                src = self.grain.ArrayRecordDataSource([f])
            except Exception as e:  # noqa: BLE001 -- array_record raises plain RuntimeErrors
                raise UserError(f"{f}: not a readable ArrayRecord file ({str(e).splitlines()[0][:120]})") from None
            for i in range(len(src)):
                yield f, i, src[i]

    def _units(self, split: str) -> Iterator:
        if self.paths["heldout"]:  # explicit held-out files
            records = (r for _, _, r in self._records(self.paths[split]))
        else:  # split the train files' records by a hash of (file, index)
            want_heldout = split == "heldout"
            records = (r for f, i, r in self._records(self.paths["train"])
                       if in_heldout(f"{os.path.basename(f)}:{i}", self.fraction) == want_heldout)
        for record in records:
            if record[:1] == b"{":
                try:
                    yield json.loads(record)
                    continue
                except json.JSONDecodeError:
                    pass
            yield record


class HFSource(_DatasetSource):
    """A Hugging Face `datasets` dataset, read as one stream in order: a directory written by save_to_disk
    (`datasets.load_from_disk`), or what `datasets.load_dataset(name_or_dir, streaming=True)` reads (a local
    directory of Parquet / JSON lines / CSV files, or a Hub name). Held out: the hf_heldout_split, or else
    the records of hf_split whose index hashes below heldout_fraction."""

    kind = "hf"

    def __init__(self, d: ml_collections.ConfigDict):
        self.datasets = _require("datasets", "hf")
        self.datasets.disable_progress_bars()
        self.name, self.config, self.text_field, self.fraction = d.hf_dataset, d.hf_config, d.text_field, \
            d.heldout_fraction
        self.splits = {"train": d.hf_split, "heldout": d.hf_heldout_split}
        if not self.name:
            raise UserError("config.data.hf_dataset is empty; give a save_to_disk directory, a directory of data "
                            "files or a Hugging Face Hub dataset name for config.data.source=hf")
        self.local = os.path.expanduser(self.name)
        if not os.path.isdir(self.local):
            if self.name.startswith(("/", ".", "~")) or os.path.exists(self.local):
                raise UserError(f"config.data.hf_dataset={self.name}: no such directory; give a save_to_disk "
                                "directory, a directory of data files or a Hub dataset name")
            self.local = None
        self.data = self._load()
        for ours, field in (("train", "hf_split"), ("heldout", "hf_heldout_split")):
            if self.splits[ours]:
                self._columns(self._split(ours), field)

    def _load(self):
        """The dataset (or its dict of splits): from disk when save_to_disk wrote it, else streamed."""
        ds = self.datasets
        saved = self.local and any(os.path.exists(os.path.join(self.local, f))
                                   for f in ("dataset_dict.json", "state.json"))
        try:
            if saved:
                return ds.load_from_disk(self.local)
            return ds.load_dataset(self.local or self.name, self.config or None, streaming=True)
        except Exception as e:  # noqa: BLE001 -- datasets raises many kinds (FileNotFoundError, hub errors)
            why = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"config.data.hf_dataset={self.name}: cannot load it ({type(e).__name__}: {why}); "
                            "check the name (and config.data.hf_config), or prepare from a local copy") from None

    def _split(self, ours: str):
        data, name = self.data, self.splits[ours]
        if not isinstance(data, dict):  # a dataset saved on its own, without splits
            if ours == "heldout" and name:
                raise UserError(f"config.data.hf_heldout_split={name!r}: {self.name} was saved without splits; "
                                "leave hf_heldout_split empty (records are held out by heldout_fraction)")
            return data
        if name not in data:
            field = "hf_split" if ours == "train" else "hf_heldout_split"
            raise UserError(f"config.data.{field}={name!r}: {self.name} has splits {', '.join(data)}")
        return data[name]

    def _columns(self, ds, field: str):
        """`ds` projected to the text column (checked when its columns are known before reading)."""
        if ds.column_names is None:
            return ds
        if self.text_field not in ds.column_names:
            raise UserError(f"config.data.text_field={self.text_field!r}: {self.name} ({field}) has columns "
                            f"{', '.join(ds.column_names)}; set text_field to the one holding the text")
        return ds.select_columns([self.text_field])

    def fingerprint(self) -> str:
        key = f"hf:{self.config}:{self.splits}:{self.text_field}:{self.fraction}:"
        if self.local:  # the files (names and sizes), so a changed copy is read again
            key += ";".join(f"{os.path.relpath(f, self.local)}={os.path.getsize(f)}"
                            for f in paths.walk_files(self.local))
        else:  # a Hub dataset is known by its name: delete the store if it changes upstream
            key += self.name
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _values(self, ours: str) -> Iterator:
        ds = self._columns(self._split(ours), "hf_split" if ours == "train" else "hf_heldout_split")
        for batch in ds.iter(batch_size=1000):
            if self.text_field not in batch:
                raise UserError(f"config.data.text_field={self.text_field!r}: {self.name} has columns "
                                f"{', '.join(batch)}; set text_field to the one holding the text")
            yield from batch[self.text_field]

    def _units(self, split: str) -> Iterator:
        if self.splits["heldout"]:
            yield from self._values(split)
            return
        heldout = split == "heldout"
        for i, value in enumerate(self._values("train")):
            if in_heldout(f"hf:{i}", self.fraction) == heldout:
                yield value
