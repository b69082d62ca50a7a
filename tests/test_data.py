"""Sources, tokenizers, the token cache and step-indexed batches."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from salt_jax.config import base_config
from salt_jax.data import batches as batches_lib
from salt_jax.data import documents, sources, store, tokenizer
from salt_jax.errors import UserError

from conftest import REPO


def _text_cfg(path, cache):
    c = base_config().data
    c.source, c.path, c.cache_dir, c.seq_len, c.heldout_fraction = "text", path, cache, 8, 0.3
    return c


def test_packing_rows_are_the_eos_separated_stream(tmp_path):
    files = {f"doc{i}.txt": f"document number {i} " * (i + 1) for i in range(12)}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8 \xc3\x28")
    (tmp_path / "empty.txt").write_text("  \n")
    cfg = _text_cfg(str(tmp_path / "*.txt"), str(tmp_path / "cache"))
    cache, tok = store.build_store(cfg)
    meta = cache.meta["splits"]
    assert meta["train"]["skipped"]["undecodable"] + meta["heldout"]["skipped"]["undecodable"] == 1
    assert meta["train"]["skipped"]["empty"] + meta["heldout"]["skipped"]["empty"] == 1
    # the train stream is exactly the train documents' bytes, each followed by EOS, in file order
    src = sources.make_source(cfg)
    want = []
    for doc in src.documents("train"):
        want += [b + 3 for b in doc.encode()] + [tokenizer.EOS_ID]
    np.testing.assert_array_equal(cache.train.tokens(), want)
    rows = cache.train.rows(np.arange(cache.train.n_rows))
    assert cache.train.n_rows == (len(want) - 1) // 8
    np.testing.assert_array_equal(rows[3], want[24:33])  # row i = stream[8i : 8i + 9]
    assert tok.decode(rows[0]) == "document "  # the first train file starts "document number"


def test_heldout_split_is_by_path_hash_and_stable(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i:02d}.txt").write_text(f"text {i}")
    cfg = _text_cfg(str(tmp_path), "")
    a = sources.make_source(cfg)
    os.remove(tmp_path / "f00.txt")
    b = sources.make_source(cfg)
    assert set(b.files["heldout"]) <= set(a.files["heldout"])
    assert not set(a.files["heldout"]) & set(a.files["train"])
    assert 4 <= len(a.files["heldout"]) <= 20  # ~30% of 40


def test_jsonl_source_reads_the_text_field(tmp_path):
    lines = [json.dumps({"text": f"record {i}", "id": i}) for i in range(30)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    cfg = _text_cfg(str(tmp_path / "a.jsonl"), "")
    cfg.heldout_fraction = 0.3
    src = sources.make_source(cfg)
    train, heldout = list(src.documents("train")), list(src.documents("heldout"))
    # one file, split by record: every record lands in exactly one split, in file order
    assert sorted(train + heldout, key=lambda d: int(d.split()[1])) == [f"record {i}" for i in range(30)]
    assert 3 <= len(heldout) <= 15 and train == sorted(train, key=lambda d: int(d.split()[1]))
    cfg.text_field = "body"
    with pytest.raises(UserError, match="text_field"):
        list(sources.make_source(cfg).documents("train"))


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="config.data.path: no file matches"):
        sources.make_source(_text_cfg(str(tmp_path / "nope*.txt"), ""))
    (tmp_path / "x.txt").write_bytes(b"\xff\xff")
    with pytest.raises(UserError, match="no usable"):
        store.build_store(_text_cfg(str(tmp_path / "x.txt"), str(tmp_path / "c")))


def test_stdlib_corpus_counts_undecodable_files(tiny_config):
    cfg = tiny_config.data
    cfg.max_files = 0
    src = sources.make_source(cfg)
    assert len(src.files["train"]) > 1000
    stats = documents.ReadStats()
    # scan the held-out and train splits' file reads without tokenizing
    for split in documents.SPLITS:
        for _ in src.documents(split, stats):
            pass
    assert stats.skipped["undecodable"] >= 1  # the stdlib ships a few non-UTF-8 test files
    assert stats.documents + stats.skipped["undecodable"] + stats.skipped["empty"] == stats.files == stats.records


def test_sentencepiece_tokenizer_round_trips_code(tmp_path):
    text = "def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n" * 50
    for i in range(6):
        (tmp_path / f"m{i}.py").write_text(text.replace("f", f"f{i}"))
    cfg = _text_cfg(str(tmp_path), str(tmp_path / "c"))
    cfg.tokenizer.kind, cfg.tokenizer.vocab_size = "sentencepiece", 300
    src = sources.make_source(cfg)
    tok = tokenizer.make_tokenizer(cfg.tokenizer, src, cfg.cache_dir)
    sample = "def f3(x):\n    return x + 1\n\u00e9\n"
    ids = tok.encode([sample])[0]
    assert tok.vocab_size == 300 and tok.pad_id == 0 and tok.eos_id == 1
    assert tok.decode(ids) == sample  # whitespace, newlines and unseen characters survive
    assert len(ids) < len(sample.encode())  # it compresses
    again = tokenizer.make_tokenizer(cfg.tokenizer, src, cfg.cache_dir)
    assert again.fingerprint() == tok.fingerprint()  # cached, not retrained


def test_batch_indices_visit_every_row_once_per_epoch():
    n, b = 50, 8
    idx = np.concatenate([batches_lib.batch_indices(s, b, n, seed=3) for s in range(25)])  # 200 = 4 epochs
    for e in range(4):
        assert sorted(idx[e * n:(e + 1) * n]) == list(range(n))
    assert not np.array_equal(idx[:n], idx[n:2 * n])  # a new order each epoch
    np.testing.assert_array_equal(batches_lib.batch_indices(7, b, n, 3), idx[56:64])  # pure in the step
    assert not np.array_equal(idx[:n], batches_lib.batch_indices(0, n, n, seed=4))  # the seed matters
    np.testing.assert_array_equal(batches_lib.batch_indices(7, b, n, 3, slice(2, 5)), idx[58:61])  # a host's part


def test_batch_indices_shuffle_well_at_scale_without_a_permutation():
    """10^9 rows (no permutation could be built per step); neighbours in a batch are unrelated rows."""
    n = 10**9
    idx = np.concatenate([batches_lib.batch_indices(s, 500, n, seed=0) for s in range(4)]).astype(np.float64)
    assert len(np.unique(idx)) == len(idx) and idx.min() >= 0 and idx.max() < n
    assert abs(np.corrcoef(idx[:-1], idx[1:])[0, 1]) < 0.1  # 4 Feistel rounds give 0.4 here
    assert abs(np.corrcoef(np.arange(len(idx)), idx)[0, 1]) < 0.1
    assert 0.4 < np.median(idx) / n < 0.6


_PRINT_BATCH = """
import hashlib, os, sys
from salt_jax.config import base_config
from salt_jax.data import batches as batches_lib
from salt_jax.data import store
c = base_config().data
c.max_files, c.seq_len, c.cache_dir = 60, 32, sys.argv[1]
cache, _ = store.build_store(c)
b = batches_lib.Batches(cache.train, 8, seed=5)
print(hashlib.sha256(b.numpy(int(sys.argv[2])).tobytes()).hexdigest())
"""


def test_batch_for_a_step_is_identical_across_fresh_processes(tmp_path, cache_dir):
    def run(step):
        out = subprocess.run([sys.executable, "-c", _PRINT_BATCH, cache_dir, str(step)], cwd=REPO,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    first, second, other = run(123), run(123), run(124)
    assert first == second and first != other
    c = base_config().data
    c.max_files, c.seq_len, c.cache_dir = 60, 32, cache_dir
    cache, _ = store.build_store(c)
    import hashlib

    assert hashlib.sha256(batches_lib.Batches(cache.train, 8, seed=5).numpy(123).tobytes()).hexdigest() == first


def test_prefetched_batches_are_the_batches_of_each_step(tmp_path):
    """The background reader hands over exactly Batches.numpy(step), in order; a step whose source changed
    after it was read ahead (the adaptive switch) is read again from the right source; errors surface."""
    path = str(tmp_path / "c")
    for i in range(6):
        (tmp_path / f"d{i}.txt").write_text(f"document {i} " * 40)
    cache, _ = store.build_store(_text_cfg(str(tmp_path / "*.txt"), path))
    full = batches_lib.Batches(cache.train, 4, seed=1)
    subset = batches_lib.Batches(cache.train, 4, seed=1, rows=np.arange(0, cache.train.n_rows, 2))
    end = {"kd": 5}
    pre = batches_lib.Prefetcher(lambda s: subset if s < end["kd"] else full, 3, 12, depth=2)
    for step in range(3, 12):
        if step == 6:
            end["kd"] = 7  # too late for the steps already read: step 6 was read from `full`
        want = subset if step < 7 else full
        np.testing.assert_array_equal(pre.take(step, want), want.numpy(step))
    pre.close()
    broken = batches_lib.Prefetcher(lambda s: None, 0, 5, depth=2)  # a source that fails to read
    with pytest.raises(AttributeError):
        broken.take(0, full)
    asked = []
    long_run = batches_lib.Prefetcher(lambda s: asked.append(s) or full, 0, 100_000, depth=2)
    long_run.take(0, full), long_run.take(1, full)
    long_run.close()  # a run that stops early (preemption, Ctrl-C): the reader stops too, and is joined
    assert not long_run._thread.is_alive() and len(asked) <= 6
