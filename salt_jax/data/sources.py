"""The source registry: config.data.source -> a `documents.Source`.

stdlib and text are file sources (salt_jax.data.files); tfds, seqio,
arrayrecord and hf are dataset sources (salt_jax.data.datasets), which import
TensorFlow / seqio / grain / datasets lazily, only when configured.
"""

from __future__ import annotations

import logging

import ml_collections

from salt_jax.data import datasets, files
from salt_jax.data.documents import Source
from salt_jax.errors import UserError

DATASETS = {"tfds": datasets.TFDSSource, "seqio": datasets.SeqioSource, "arrayrecord": datasets.ArrayRecordSource,
            "hf": datasets.HFSource}
SOURCES = ("stdlib", "text", *DATASETS)


def make_source(data_cfg: ml_collections.ConfigDict) -> Source:
    """The source named by config.data.source (one of SOURCES)."""
    kind = data_cfg.source
    if kind in DATASETS:
        return DATASETS[kind](data_cfg)
    if kind not in SOURCES:
        raise UserError(f"config.data.source={kind!r}: unknown source; use one of {', '.join(SOURCES)}")
    source = files.file_source(data_cfg)
    logging.info("source %s: %d train files, %d held-out files under %s", kind,
                 len(source.files["train"]), len(source.files["heldout"]), source.root)
    return source
