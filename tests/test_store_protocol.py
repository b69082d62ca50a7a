"""The Store protocol (salt_jax.data.store.Store): a TokenStore and a MixtureStore both implement it, and what
callers once asked with hasattr/getattr (a mixture's names and weights, its stores, its draw, its held-out splits,
SALT_DS's pool) answers as before."""

import json
import os

import numpy as np
import pytest

from salt_jax.data import batches as batches_lib
from salt_jax.data import mixture, store
from salt_jax.errors import UserError
from salt_jax.kd import selection

MEMBERS = ("directory", "train", "heldout", "counts", "heldout_splits", "mixture", "components", "pool_rows")


def _corpus(directory, modules) -> str:
    os.makedirs(directory)
    stdlib = os.path.dirname(os.__file__)
    for name in modules:
        text = open(os.path.join(stdlib, name), encoding="utf-8").read()
        with open(os.path.join(directory, f"{name}.jsonl"), "w") as fh:
            fh.writelines(json.dumps({"text": text[i:i + 300]}) + "\n" for i in range(0, len(text), 300))
    return f"{directory}/*.jsonl"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(a TokenStore of one corpus, a MixtureStore of two), small JSONL corpora, byte tokenizer."""
    from salt_jax.recipes import tiny_run

    root = tmp_path_factory.mktemp("stores")
    prose, code = _corpus(str(root / "prose"), ["textwrap.py", "glob.py"]), _corpus(str(root / "code"), ["shlex.py"])
    c = tiny_run("baseline")
    c.data.cache_dir, c.data.seq_len = str(root / "cache"), 32
    c.data.source, c.data.path = "text", prose
    one, _ = store.build_store(c.data)
    c.data.mixture = f"prose:3={prose},code:1={code}"
    mixed, _ = store.build_store(c.data)
    return one, mixed


def test_both_stores_implement_the_protocol(stores):
    one, mixed = stores
    assert isinstance(one, store.TokenStore) and isinstance(mixed, mixture.MixtureStore)
    for s in (one, mixed):
        assert isinstance(s, store.Store)
        assert all(hasattr(s, m) for m in MEMBERS)
    assert not isinstance(object(), store.Store)


def test_one_corpus_answers_as_the_hasattr_paths_did(stores):
    one, _ = stores
    assert one.mixture() is None and one.counts is None  # Run.mixture; training_batches's plain Batches
    assert one.components() == {"": one}  # prepare's report of each store
    assert one.heldout_splits == {"": one.heldout}  # eval_sets's one set
    assert type(batches_lib.training_batches(one, 8, 5)) is batches_lib.Batches
    n = one.train.n_rows  # SALT_DS's pool: as selection.pool_rows drew it
    np.testing.assert_array_equal(one.pool_rows(40, 5), selection.pool_rows(n, 40, 5))
    np.testing.assert_array_equal(one.pool_rows(0, 5), np.arange(n))
    with pytest.raises(UserError, match=f"ds_pool_size={n + 1} exceeds the {n} training sequences"):
        one.pool_rows(n + 1, 0)


def test_a_mixture_answers_as_the_hasattr_paths_did(stores):
    _, mixed = stores
    assert mixed.mixture() == dict(zip(mixed.names, mixed.weights)) == {"prose": 0.75, "code": 0.25}
    assert mixed.components() == dict(zip(mixed.names, mixed.stores))
    assert list(mixed.heldout_splits) == ["prose", "code"] and list(mixed.counts) == [49152, 16384]
    assert isinstance(batches_lib.training_batches(mixed, 8, 5), batches_lib.MixtureBatches)
    comp = np.searchsorted(mixed.train.offsets, mixed.pool_rows(40, 0), side="right") - 1
    assert list(np.bincount(comp)) == [30, 10]  # (drawn by weight)
