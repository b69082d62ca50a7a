"""Mixtures of corpora (config.data.mixture): several token stores trained on as one, each row's corpus drawn by weight.

    config.data.mixture = "web:0.7=/data/web/*.jsonl,code:0.3=/data/code/*.jsonl|text_field=content"

A component is NAME:WEIGHT=WHERE, optionally followed by |FIELD=VALUE options;
components are separated by commas. WHERE is what the component's source
reads: files for source=text (the default) and arrayrecord (comma-separated
files, directories or globs, as config.data.path), the dataset for tfds
(tfds_name), the task for seqio (seqio_task), the dataset for hf (hf_dataset:
a save_to_disk directory, a directory of data files or a Hub name), nothing
for stdlib. The options set the config.data fields of that corpus alone
(OPTIONS: its source, text field, held-out split, ...); every other
config.data field (the tokenizer, seq_len, max_files, heldout_fraction, ...)
is shared. Weights are relative:
any positive numbers, normalised to sum to 1. One string, so the whole mixture
is one field a command line can set and config.json records (a resumed run
with another mixture is refused like any other changed data field).

Components are separate paths, each with its own token store (keyed by its
source and the tokenizer, as a single-corpus run's), rather than one file set
split by a field of its records: any source can be a component (JSONL, a TFDS
dataset, the standard library), a store is shared by every mixture and every
single-corpus run that names the same corpus, and re-weighting a mixture
re-tokenizes nothing.

One tokenizer for the whole mixture. Byte, Hugging Face and given
SentencePiece model files are shared as they are. A SentencePiece model
trained here is trained on an equal share of `tokenizer.max_train_lines` lines
from each component's train split (`TokenizerSample`), keyed by the components'
fingerprints but not their weights: runs that differ only in weights share the
tokenizer and the stores, so their losses are in the same units (a one-corpus
mixture trains the single corpus's own tokenizer).

How a batch draws its rows: `salt_jax.data.batches.mixture_indices`. Held-out
loss is evaluated on each component's own held-out split and reported per
corpus (salt_jax.train.metrics.eval_line).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
from typing import Callable, Iterator

import ml_collections
import numpy as np

from salt_jax import paths
from salt_jax.data import sources, tokenizer
from salt_jax.errors import UserError

PERIOD = 1 << 16  # examples per stratum of the draw: a weight is realised as a count per PERIOD examples
# The config.data fields a component may set for itself (|FIELD=VALUE); WHERE sets the one its source reads.
OPTIONS = ("source", "text_field", "heldout_path", "tfds_data_dir", "seqio_module", "train_split", "heldout_split",
           "heldout_fraction", "max_files", "hf_config", "hf_split", "hf_heldout_split")
WHERE = {"text": "path", "arrayrecord": "path", "tfds": "tfds_name", "seqio": "seqio_task", "hf": "hf_dataset",
         "stdlib": None}
EXAMPLE = "'web:0.7=/data/web/*.jsonl,code:0.3=/data/code/*.jsonl'"
_START = re.compile(r"\s*([^\s:=,|/]+)\s*:\s*([^:=,|/]*?)\s*=(.*)", re.S)  # NAME:WEIGHT=rest
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class Component:
    """One corpus of a mixture: its name (the eval/loss/<name> key), normalised weight and config.data."""

    name: str
    weight: float
    data: ml_collections.ConfigDict


def _fail(message: str) -> None:
    raise UserError(f"config.data.mixture: {message}")


def parse(data_cfg: ml_collections.ConfigDict) -> list[Component]:
    """The components of config.data.mixture, each with its own config.data; a bad spec is a UserError naming
    the component and what is wrong."""
    pieces, texts = data_cfg.mixture.split(","), []
    for piece in pieces:
        if _START.match(piece):
            texts.append(piece)
        elif texts:
            texts[-1] += "," + piece  # the next of a component's comma-separated paths
        else:
            _fail(f"{piece.strip()!r} is not NAME:WEIGHT=PATH; give comma-separated components, e.g. {EXAMPLE}")
    found, raw = [], []
    for text in texts:
        name, weight, rest = _START.match(text).groups()
        if not _NAME.match(name):
            _fail(f"component name {name!r}: use a letter, then letters, digits, _ or -")
        if name in [c[0] for c in raw]:
            _fail(f"component name {name!r} is used twice; give each corpus its own name")
        try:
            w = float(weight)
        except ValueError:
            w = math.nan
        if not (math.isfinite(w) and w > 0):
            _fail(f"component {name!r} has weight {weight!r}; weights must be positive numbers")
        where, *options = rest.split("|")
        raw.append((name, w, where.strip(), options))
    total = sum(w for _, w, _, _ in raw)
    for name, w, where, options in raw:
        if w / total * PERIOD < 1:
            _fail(f"component {name!r} has weight {w:g}, under 1/{PERIOD} of the total; raise it or leave it out")
        found.append(Component(name, w / total, _component_config(data_cfg, name, where, options)))
    return found


def _component_config(data_cfg: ml_collections.ConfigDict, name: str, where: str,
                      options: list[str]) -> ml_collections.ConfigDict:
    """config.data for one component: the shared fields, its options, and WHERE in its source's field."""
    d = copy.deepcopy(data_cfg)
    d.mixture, d.source = "", "text"
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if key not in OPTIONS or not eq:
            _fail(f"component {name!r} has unknown option {option.strip()!r}; give |FIELD=VALUE with FIELD one of "
                  f"{', '.join(OPTIONS)}")
        try:
            d[key] = type(d[key])(value.strip())
        except ValueError:
            _fail(f"component {name!r}: option {key}={value.strip()!r} is not a {type(d[key]).__name__}")
    if d.source not in WHERE:
        _fail(f"component {name!r} has unknown source {d.source!r}; use one of {', '.join(WHERE)}")
    if WHERE[d.source] is not None:
        if not where:
            _fail(f"component {name!r} names no {WHERE[d.source]}; give NAME:WEIGHT={WHERE[d.source].upper()}")
        d[WHERE[d.source]] = where
    elif where:
        _fail(f"component {name!r}: source {d.source} reads no path; leave it empty ({name}:WEIGHT=|source=stdlib)")
    return d


def counts(weights, period: int = PERIOD) -> np.ndarray:
    """Each component's examples per `period`: its weight's share, rounded by largest remainder so that the
    counts sum to `period` exactly (a component's share over whole periods is then exact)."""
    w = np.asarray(weights, np.float64)
    share = w / w.sum() * period
    out = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - out), kind="stable")
    out[order[:period - int(out.sum())]] += 1
    return out


def named_error(e: UserError, name: str) -> UserError:
    """A component's error naming the mixture: config.data.path -> config.data.mixture (web: path)."""
    message = re.sub(r"config\.data(?!\.mixture)(?:\.(\w+))?",
                     lambda m: f"config.data.mixture ({name}{': ' + m.group(1) if m.group(1) else ''})", str(e))
    return UserError(message)


class TokenizerSample:
    """What a mixture's SentencePiece tokenizer trains on: the same number of lines from each component's train
    split (max_lines / K, a seeded sample, as tokenizer.training_lines draws), whatever the weights."""

    def __init__(self, components: list[Component], component_sources: list, max_lines: int):
        order = sorted(range(len(components)), key=lambda i: component_sources[i].fingerprint())
        self.parts = [(components[i].name, component_sources[i]) for i in order]
        self.max_lines = max_lines

    def fingerprint(self) -> str:
        return hashlib.sha256(("mixture:" + ",".join(s.fingerprint() for _, s in self.parts)).encode()).hexdigest()[:16]

    def documents(self, split: str = "train", stats=None) -> Iterator[str]:
        for name, source in self.parts:
            try:
                yield from tokenizer.training_lines(source.documents("train"), self.max_lines // len(self.parts), 0)
            except UserError as e:
                raise named_error(e, name) from None


class ConcatSplit:
    """The same split of several stores read as one: row r of component c is row offsets[c] + r."""

    def __init__(self, parts: list):
        self.parts, self.seq_len = parts, parts[0].seq_len
        self.sizes = np.array([p.n_rows for p in parts], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n_rows, self.n_tokens = int(self.offsets[-1]), sum(p.n_tokens for p in parts)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows [len(idx), seq_len + 1] (int32) by global row index, each read from its component's store."""
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx), self.seq_len + 1), np.int32)
        comp = np.searchsorted(self.offsets, idx, side="right") - 1
        for c in np.unique(comp):
            sel = comp == c
            out[sel] = self.parts[c].rows(idx[sel] - self.offsets[c])
        return out


class MixtureStore:
    """A mixture's token stores (one TokenStore per component) read as one (a salt_jax.data.store.Store).

    `train` / `heldout` concatenate the components' splits; `counts` is the draw
    (each component's examples per PERIOD); `heldout_splits` the held-out split of
    each, evaluated separately. `directory` (keyed by the stores and the counts)
    holds what depends on the mixture's batches: SALT_DS scores, cached teacher
    logits.
    """

    def __init__(self, components: list[Component], stores: list, cache_dir: str):
        self.names = [c.name for c in components]
        self.weights = [c.weight for c in components]
        self.stores, self.counts = stores, counts(self.weights)
        for name, store in zip(self.names, stores):
            for split in ("train", "heldout"):
                if getattr(store, split).n_rows < 1:
                    _fail(f"component {name!r}: its {split} split has fewer tokens than one sequence of "
                          f"{store.train.seq_len}; add data to it, lower config.data.seq_len or raise its "
                          "heldout_fraction")
        self.train = ConcatSplit([s.train for s in stores])
        self.heldout = ConcatSplit([s.heldout for s in stores])
        self.heldout_splits = {name: s.heldout for name, s in zip(self.names, stores)}
        names = [s.directory.rstrip("/").rsplit("/", 1)[-1] for s in stores]
        key = hashlib.sha256(json.dumps([self.names, self.counts.tolist(), names]).encode()).hexdigest()[:16]
        self.directory = paths.join(cache_dir, "tokens", f"mixture-{key}")

    def mixture(self) -> dict[str, float]:
        """{corpus name: weight}."""
        return dict(zip(self.names, self.weights))

    def components(self) -> dict:
        """{corpus name: its TokenStore}."""
        return dict(zip(self.names, self.stores))

    def pool_rows(self, pool_size: int, seed: int) -> np.ndarray:
        """SALT_DS's pool: each component's weight's share of `pool_size` distinct rows of it (all its rows if it
        has fewer), drawn with `seed`; global row ids, sorted. pool_size <= 0: every row."""
        if pool_size <= 0:
            return np.arange(self.train.n_rows)
        if pool_size > self.train.n_rows:
            raise UserError(f"config.salt.ds_pool_size={pool_size} exceeds the {self.train.n_rows} training "
                            "sequences of the mixture; lower it (or use 0 for every row)")
        rng = np.random.default_rng([seed, 0x5A17])
        want = counts(self.weights, pool_size)
        return np.sort(np.concatenate([off + rng.choice(n, min(k, n), replace=False) for off, n, k in
                                       zip(self.train.offsets, self.train.sizes, want)]))


def build(data_cfg: ml_collections.ConfigDict, cache_dir: str, train_tokenizer: bool,
          open_store: Callable) -> tuple[MixtureStore, tokenizer.Tokenizer]:
    """The mixture's stores and its one tokenizer; `open_store(source, tok, data_cfg)` opens (or builds) one
    component's store (salt_jax.data.store.build_store)."""
    components = parse(data_cfg)
    found = []
    for c in components:
        try:
            found.append(sources.make_source(c.data))
        except UserError as e:
            raise named_error(e, c.name) from None
    sample = found[0] if len(found) == 1 else TokenizerSample(components, found, data_cfg.tokenizer.max_train_lines)
    tok = tokenizer.make_tokenizer(data_cfg.tokenizer, sample, cache_dir, train=train_tokenizer)
    stores = []
    for c, source in zip(components, found):
        try:
            stores.append(open_store(source, tok, c.data))
        except UserError as e:
            raise named_error(e, c.name) from None
    return MixtureStore(components, stores, cache_dir), tok
