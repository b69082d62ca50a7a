"""The token store on an object store: raw data, tokenizer and store on gs:// paths, and hosts building one
shared store together. gs:// is served from a local directory through etils.epath's mock backend (a file written
appears whole when closed, as an object does), so every call salt_jax makes for a URI goes through epath
as it would to GCS, and any call that bypassed epath
would touch a literal "gs:" directory in the working directory instead (checked)."""

import os
import threading

import numpy as np
import pytest
from etils.epath import gpath as epath_gpath
from etils.epath import testing as epath_testing

from salt_jax import paths
from salt_jax.config import base_config
from salt_jax.data import shard_writer, store


class _Upload:
    """A file written like a GCS object: invisible until closed, then whole."""

    def __init__(self, fn, path, mode, uploads):
        self.path, self.tmp = path, str(uploads / f"{len(os.listdir(uploads))}-{os.getpid()}-{id(self)}")
        self.fh = fn(self.tmp, mode)

    def write(self, data):
        return self.fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if not self.fh.closed:
            self.fh.close()
            os.replace(self.tmp, self.path)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    root = tmp_path / "gcs"
    root.mkdir()
    monkeypatch.setenv("EPATH_USE_TF", "false")  # epath's own backend table, which the mock replaces
    monkeypatch.setattr(epath_gpath, "_is_tf_installed", lambda: False)  # (epath caches the first answer)
    monkeypatch.chdir(tmp_path)
    local = lambda p: str(p).replace("gs://", f"{root}/", 1)  # noqa: E731
    uri = lambda p: str(p).replace(f"{root}/", "gs://", 1)  # noqa: E731
    calls = []
    uploads = tmp_path / "uploads"  # outside the bucket
    uploads.mkdir()

    def one(fn, p, *a, **k):
        calls.append(str(p))
        assert str(p).startswith("gs://"), p
        return fn(local(p), *a, **k)

    def open_(fn, p, mode="r"):
        if "w" not in mode:
            return one(fn, p, mode)
        one(lambda *_: None, p)  # checked and counted
        return _Upload(fn, local(p), mode, uploads)

    def two(fn, p, d, *a, **k):
        return fn(local(p), local(d), *a, **k)

    def walk(fn, p, **k):
        for r, dirs, files in fn(local(p), **k):
            yield uri(r), dirs, files

    with epath_testing.mock_epath(open=open_, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one,
                                  remove=one, rmtree=one, stat=one, walk=walk, rename=two, replace=two,
                                  copy=two, glob=lambda fn, p: [uri(x) for x in fn(local(p))]):
        yield root, calls
    assert not os.path.exists(tmp_path / "gs:"), "a gs:// path was opened as a local path"


def _corpus(directory, n=6):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lines = [f'{{"text": "doc {i}.{j}: ' + " ".join(f"w{i}x{j}x{k}" for k in range(60)) + '"}'
                 for j in range(12)]
        (directory / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    (directory / ".hidden.jsonl").write_text("not json\n")  # hidden files are not data


def _cfg(path, cache, kind="bytes"):
    c = base_config().data
    c.source, c.path, c.cache_dir, c.seq_len, c.heldout_fraction, c.shard_chars = "text", path, cache, 16, 0.2, 4000
    c.tokenizer.kind, c.tokenizer.vocab_size = kind, 280
    return c


def _same_store(a, b):
    assert os.path.basename(a.directory) == os.path.basename(b.directory)  # same source and tokenizer keys
    assert a.meta == b.meta
    for split in ("train", "heldout"):
        np.testing.assert_array_equal(getattr(a, split).tokens(), getattr(b, split).tokens())
    rows = np.array([0, 5, a.train.n_rows - 1])
    np.testing.assert_array_equal(a.train.rows(rows), b.train.rows(rows))


def test_store_built_and_read_on_gs_equals_the_local_store(fake_gcs, tmp_path):
    root, calls = fake_gcs
    _corpus(root / "bucket" / "corpus")
    _corpus(tmp_path / "local" / "corpus")
    remote, tok = store.build_store(_cfg("gs://bucket/corpus/*.jsonl", "gs://bucket/cache", "sentencepiece"))
    local, _ = store.build_store(_cfg(str(tmp_path / "local" / "corpus"), str(tmp_path / "local" / "cache"),
                                      "sentencepiece"))
    assert remote.directory.startswith("gs://bucket/cache/tokens/")
    assert len(remote.meta["splits"]["train"]["shards"]) >= 3 and remote.meta["splits"]["train"]["files"] == 6
    _same_store(remote, local)
    # built in place (no rename on an object store), meta.json last; the tokenizer cached beside it
    key = os.path.basename(remote.directory)
    assert sorted(os.listdir(root / "bucket" / "cache" / "tokens")) == [key]
    assert os.listdir(root / "bucket" / "cache" / "tokenizers")[0].endswith(".model")
    assert any(c.endswith(".bin") for c in calls)  # the shards were read through epath
    again, _ = store.build_store(_cfg("gs://bucket/corpus", "gs://bucket/cache", "sentencepiece"))
    assert again.directory == remote.directory  # a directory URI names the same files: opened, not rebuilt


def test_hosts_split_the_build_of_a_shared_store(fake_gcs, tmp_path):
    root, _ = fake_gcs
    _corpus(root / "bucket" / "corpus")
    cfg = _cfg("gs://bucket/corpus", "gs://bucket/shared")
    written = {0: [], 1: []}
    real_write = shard_writer.write_shard

    def spy(docs, path, tok=None, batch_docs=256):
        written[int(threading.current_thread().name[-1])].append(os.path.basename(path))
        return real_write(docs, path, tok, batch_docs)

    out, errors = {}, []

    def host(i):
        try:
            out[i] = store.build_store(cfg, workers=0, host=(i, 2))[0]
        except BaseException as e:  # noqa: BLE001 -- re-raised below
            errors.append(e)

    shard_writer.write_shard = spy
    try:
        threads = [threading.Thread(target=host, args=(i,), name=f"host{i}") for i in (1, 0)]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
    finally:
        shard_writer.write_shard = real_write
    assert not errors, errors
    single, _ = store.build_store(_cfg("gs://bucket/corpus", "gs://bucket/single"), host=(0, 1))
    _same_store(out[0], single)
    _same_store(out[1], single)
    train = [s["file"] for s in single.meta["splits"]["train"]["shards"]]
    assert sorted(f for f in written[0] if f.startswith("train")) == train[0::2]  # host p writes shards p, p+2, ...
    assert sorted(f for f in written[1] if f.startswith("train")) == train[1::2]


def test_glob_and_walk_of_uris(fake_gcs):
    root, _ = fake_gcs
    _corpus(root / "b" / "d" / "sub")
    assert paths.glob("gs://b/d/sub/part-[01].jsonl") == ["gs://b/d/sub/part-0.jsonl", "gs://b/d/sub/part-1.jsonl"]
    assert paths.walk_files("gs://b/d") == [f"gs://b/d/sub/part-{i}.jsonl" for i in range(6)]
    assert paths.getsize("gs://b/d/sub/part-0.jsonl") == (root / "b/d/sub/part-0.jsonl").stat().st_size
    with pytest.raises(ValueError, match=r"'\*\*' is not supported"):
        paths.glob("gs://b/**/x")


def test_workdir_files_on_gs(fake_gcs, tiny_config):
    """A gs:// workdir's own files: config.json (and its drift copy), metrics.jsonl (rewritten whole, cut
    back on resume) and summary.json, read back by the experiment report. Checkpoints are Orbax's."""
    from salt_jax.experiment import report
    from salt_jax.train import metrics
    from salt_jax.train import workdir as workdir_lib

    root, _ = fake_gcs
    workdir = "gs://bucket/runs/a"
    paths.makedirs(workdir)
    workdir_lib.write_config(tiny_config, workdir)
    changed = tiny_config.copy_and_resolve_references()
    changed.optim.learning_rate = 0.5
    workdir_lib.write_config(changed, workdir)
    assert paths.read_json(f"{workdir}/config.json")["optim"]["learning_rate"] == 0.5
    assert paths.read_json(f"{workdir}/config.prev.json")["optim"]["learning_rate"] == tiny_config.optim.learning_rate
    w = metrics.MetricsWriter(workdir)
    for step in (4, 8, 12):
        w.write("eval", step, {"loss": 5.0 - step / 4})
    w.close()
    assert [r["step"] for r in metrics.read_metrics(f"{workdir}/metrics.jsonl")] == [4, 8, 12]
    w = metrics.MetricsWriter(workdir, resume_step=8)  # resumed from the checkpoint of step 8
    assert (root / "bucket/runs/a/metrics.jsonl").read_text().count("\n") == 2
    w.write("eval", 12, {"loss": 1.5})
    w.close()
    paths.write_json(f"{workdir}/summary.json", {"steps": 12, "kd_phase_end": 0})
    run = report.RunOutputs(workdir)
    assert [r["loss"] for r in run.evals] == [4.0, 3.0, 1.5] and run.kd_phase_end == 0
    assert run.config.optim.learning_rate == 0.5


def test_teacher_checkpoint_found_and_fingerprinted_on_gs(fake_gcs, teacher_dir):
    import shutil

    from salt_jax.kd import teacher
    from salt_jax.model import checkpoints

    root, _ = fake_gcs
    shutil.copytree(teacher_dir, root / "bucket" / "teacher")
    local_root, local_step = checkpoints.resolve_checkpoint(teacher_dir)
    remote_root, remote_step = checkpoints.resolve_checkpoint("gs://bucket/teacher")
    assert (remote_root, remote_step) == ("gs://bucket/teacher/checkpoints", local_step)
    assert checkpoints.read_record(remote_root, remote_step) == checkpoints.read_record(local_root, local_step)
    assert (teacher.checkpoint_fingerprint(f"{remote_root}/{remote_step}")
            == teacher.checkpoint_fingerprint(os.path.join(local_root, str(local_step))))


def test_compressed_and_parquet_corpus_files_on_gs(fake_gcs, tmp_path):
    """The corpus formats are read through the same paths layer: .jsonl.zst, .json.gz and Parquet on gs://
    give the store of the same files on a local disk."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root, calls = fake_gcs
    texts = [f"doc {i}: " + " ".join(f"w{i}x{k}" for k in range(50)) for i in range(90)]
    lines = lambda docs: "".join(f'{{"text": "{d}"}}\n' for d in docs).encode()  # noqa: E731
    for directory in (root / "bucket" / "formats", tmp_path / "local"):
        directory.mkdir(parents=True)
        (directory / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines(texts[:30])))
        (directory / "b.json.gz").write_bytes(gzip.compress(lines(texts[30:60])))
        pq.write_table(pa.table({"text": texts[60:]}), str(directory / "c.parquet"), row_group_size=7)
    remote, _ = store.build_store(_cfg("gs://bucket/formats", "gs://bucket/cache"), host=(0, 1))
    local, _ = store.build_store(_cfg(str(tmp_path / "local"), str(tmp_path / "cache")))
    assert remote.meta["splits"]["train"]["documents"] + remote.meta["splits"]["heldout"]["documents"] == 90
    assert any(c.endswith("c.parquet") for c in calls) and any(c.endswith("a.jsonl.zst") for c in calls)
    _same_store(remote, local)
