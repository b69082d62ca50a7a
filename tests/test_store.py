"""The sharded token store: equal to the one-stream store, parallel and resumable builds, bounded memory."""

import contextlib
import json
import os
import tracemalloc

import numpy as np
import pytest

from salt_jax.config import base_config
from salt_jax.data import documents, shard_writer, sources, store, tokenizer
from salt_jax.errors import UserError


def _corpus(tmp_path, n_files=8, words=400):
    d = tmp_path / "corpus"
    d.mkdir(exist_ok=True)
    for i in range(n_files):
        (d / f"f{i:02d}.txt").write_text(" ".join(f"w{i}x{j}" for j in range(words * (i + 1))))
    return str(d)


def _cfg(path, cache, shard_chars, seq_len=16):
    c = base_config().data
    c.source, c.path, c.cache_dir, c.seq_len, c.heldout_fraction = "text", path, cache, seq_len, 0.2
    c.shard_chars = shard_chars
    return c


def _stream(cfg):
    """The reference: every train document's bytes + EOS, concatenated in source order (the v1 store's stream)."""
    out = []
    for doc in sources.make_source(cfg).documents("train"):
        out += [b + 3 for b in doc.encode()] + [tokenizer.EOS_ID]
    return np.asarray(out, np.int32)


def test_small_shards_give_the_same_stream_and_rows_across_boundaries(tmp_path):
    path = _corpus(tmp_path)
    one, _ = store.build_store(_cfg(path, str(tmp_path / "a"), 10**9))
    many, _ = store.build_store(_cfg(path, str(tmp_path / "b"), 3000))
    assert len(one.meta["splits"]["train"]["shards"]) == 1 and len(many.meta["splits"]["train"]["shards"]) >= 5
    want = _stream(_cfg(path, "", 1))
    np.testing.assert_array_equal(one.train.tokens(), want)
    np.testing.assert_array_equal(many.train.tokens(), want)
    all_rows = np.arange(many.train.n_rows)
    np.testing.assert_array_equal(many.train.rows(all_rows), one.train.rows(all_rows))
    L = many.train.seq_len
    np.testing.assert_array_equal(many.train.rows(np.array([7]))[0], want[7 * L:8 * L + 1])
    # a row that straddles the first shard boundary
    edge = int(many.train.offsets[1]) // L
    np.testing.assert_array_equal(many.train.rows(np.array([edge]))[0], want[edge * L:(edge + 1) * L + 1])


def test_parallel_build_writes_byte_identical_shards(tmp_path):
    path = _corpus(tmp_path)
    a, _ = store.build_store(_cfg(path, str(tmp_path / "a"), 3000), workers=0)
    b, _ = store.build_store(_cfg(path, str(tmp_path / "b"), 3000), workers=2)
    assert a.meta == b.meta
    for shard in a.meta["splits"]["train"]["shards"] + a.meta["splits"]["heldout"]["shards"]:
        with open(os.path.join(a.directory, shard["file"]), "rb") as fa, \
                open(os.path.join(b.directory, shard["file"]), "rb") as fb:
            assert fa.read() == fb.read(), shard["file"]


def test_an_interrupted_build_keeps_its_shards_and_resumes_to_the_same_store(tmp_path, monkeypatch):
    path = _corpus(tmp_path)
    clean, _ = store.build_store(_cfg(path, str(tmp_path / "clean"), 3000))
    real, calls = shard_writer.write_shard, []

    def dies_after_three(docs, shard_path, tok=None):
        if len(calls) == 3:
            open(shard_path + ".tmp999", "wb").write(b"torn")  # a writer killed mid-shard
            raise KeyboardInterrupt
        calls.append(shard_path)
        return real(docs, shard_path, tok)

    monkeypatch.setattr(shard_writer, "write_shard", dies_after_three)
    cfg = _cfg(path, str(tmp_path / "resumed"), 3000)
    with pytest.raises(KeyboardInterrupt):
        store.build_store(cfg)
    partial = os.path.dirname(calls[0])
    assert partial.endswith(".partial") and not os.path.exists(partial.removesuffix(".partial"))
    kept = {p: os.stat(p).st_mtime_ns for p in calls}
    monkeypatch.setattr(shard_writer, "write_shard", real)
    resumed, _ = store.build_store(cfg)
    for p, mtime in kept.items():  # the finished shards were not rewritten
        assert os.stat(os.path.join(resumed.directory, os.path.basename(p))).st_mtime_ns == mtime
    assert resumed.meta == clean.meta and not any(".tmp" in f for f in os.listdir(resumed.directory))
    np.testing.assert_array_equal(resumed.train.tokens(), clean.train.tokens())


def _peak_bytes(cfg) -> int:
    tracemalloc.start()
    try:
        store.build_store(cfg)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_build_memory_does_not_grow_with_the_corpus(tmp_path):
    """One JSONL file of 1.5 MB vs 6 MB, 200 KB shards: the build's peak Python allocation is the same (it
    streams records and holds one shard), while the v1 store held the whole stream (> 2 bytes/token)."""
    peaks = {}
    for scale in (1, 4):
        d = tmp_path / f"x{scale}"
        d.mkdir()
        with open(d / "data.jsonl", "w") as fh:
            for i in range(1500 * scale):
                fh.write(json.dumps({"text": f"record {i} " + "lorem ipsum dolor " * 55}) + "\n")
        peaks[scale] = _peak_bytes(_cfg(str(d / "data.jsonl"), str(tmp_path / f"c{scale}"), 200_000))
        tokens = store.build_store(_cfg(str(d / "data.jsonl"), str(tmp_path / f"c{scale}"), 200_000))[0].train.n_tokens
        assert tokens > 1_000_000 * scale
    assert peaks[4] < 1.3 * peaks[1], peaks
    assert peaks[4] < 2 * 4_000_000  # well under the 4x corpus's ~4.8M tokens held as one array


def test_a_damaged_store_is_one_clear_error(tmp_path):
    path = _corpus(tmp_path)
    cfg = _cfg(path, str(tmp_path / "c"), 3000)
    cache, _ = store.build_store(cfg)
    shard = os.path.join(cache.directory, cache.meta["splits"]["train"]["shards"][1]["file"])
    with open(shard, "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(UserError, match=r"train-00001.bin: unreadable token store shard .*delete .* to rebuild"):
        store.build_store(cfg)
    meta = os.path.join(cache.directory, "meta.json")
    good = open(meta).read()
    open(meta, "w").write("{not json")
    with pytest.raises(UserError, match="meta.json: unreadable token store index"):
        store.build_store(cfg)
    open(meta, "w").write(good.replace('"tokenizer": "bytes-v1"', '"tokenizer": "sp-0123456789abcdef"'))
    with pytest.raises(UserError, match="built with tokenizer sp-0123456789abcdef, this run tokenizes with bytes-v1"):
        store.build_store(cfg)
    open(meta, "w").write(good)
    with open(shard, "r+b") as fh:  # the right size, a garbage body: ids beyond the 259-id byte vocabulary
        fh.truncate(0)
        fh.write(np.full(cache.meta["splits"]["train"]["shards"][1]["tokens"], 40000, "<u2").tobytes())
    damaged, _ = store.build_store(cfg)
    with pytest.raises(UserError, match=r"train-00001.bin: token id 40000 is outside the vocabulary \(259\) .* "
                                        r"the shard is damaged; delete .* to rebuild"):
        damaged.train.rows(np.arange(damaged.train.n_rows))
    np.testing.assert_array_equal(damaged.train.rows(np.array([0])), cache.train.rows(np.array([0])))
    os.remove(meta)  # a store that lost its index is rebuilt, whole
    rebuilt, _ = store.build_store(cfg)
    assert rebuilt.directory == cache.directory and rebuilt.meta == cache.meta
    np.testing.assert_array_equal(rebuilt.train.tokens(), _stream(cfg))


def test_prepare_builds_the_store_the_run_opens(tmp_path, tiny_config):
    import subprocess
    import sys

    from conftest import REPO

    cache = str(tmp_path / "cache")
    args = [sys.executable, "-m", "salt_jax.prepare", f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}",
            f"--config.data.cache_dir={cache}", "--config.data.max_files=60", "--config.data.shard_chars=50000"]
    out = subprocess.run(args + ["--workers=2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    directory = [ln for ln in out.stdout.splitlines() if ln.startswith("token store: ")][-1].split(": ", 1)[1]
    assert "token store train: " in out.stdout and "tokens/s, ETA" in out.stdout  # the progress line
    # the run's config (same data fields) opens that store: nothing is rebuilt
    cfg = tiny_config.data
    cfg.cache_dir, cfg.max_files, cfg.shard_chars = cache, 60, 50000
    mtime = os.stat(os.path.join(directory, "meta.json")).st_mtime_ns
    opened, _ = store.build_store(cfg)
    assert opened.directory == directory and os.stat(os.path.join(directory, "meta.json")).st_mtime_ns == mtime
    assert len(opened.meta["splits"]["train"]["shards"]) > 2
    bad = subprocess.run(args + ["--workers=-1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: --workers=-1: must be 0 (this process) or more")
    bad = subprocess.run(args + ["--process_count=2", "--process_index=1"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: --process_count=2: the machines must share the store; use a gs:// or s3:// config.data.cache_dir")


def test_jsonl_byte_ranges_read_each_record_once_in_order(tmp_path):
    """Tasks cut a JSONL file at arbitrary bytes (mid-line, mid-character): the parts' documents, in order,
    are exactly the file's records of each split, every record in one split."""
    d = tmp_path / "j"
    d.mkdir()
    texts = [f"record {i} " + "é" * (i % 7) + " x" * (i % 13) for i in range(300)]
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    (d / "b.txt").write_text("a plain file is one document")
    cfg = _cfg(str(d), "", 1)
    cfg.heldout_fraction = 0.3
    source = sources.make_source(cfg)
    seen = []
    split_b = "train" if str(d / "b.txt") in source.files["train"] else "heldout"
    last = source.tasks(split_b, 97)[-1]
    assert [p.path.endswith("b.txt") for p in last] == [False, True]  # a.jsonl's last range packed with b.txt
    for split in ("train", "heldout"):
        tasks = source.tasks(split, 97)  # 97-byte ranges: most cuts fall inside a line
        assert len(tasks) > 50  # cut into ranges
        stats = documents.ReadStats()
        got = [doc for parts in tasks for doc in source.part_documents(parts, split, stats)]
        assert got == list(source.documents(split))
        assert stats.files == len(source.files[split])  # a file counts once, however many ranges it has
        seen += got
    assert sorted(seen) == sorted(texts + ["a plain file is one document"])
    assert 0.15 < len(list(source.documents("heldout"))) / len(texts) < 0.45


def test_a_bad_jsonl_line_is_skipped_and_a_wrong_text_field_named(tmp_path):
    d = tmp_path / "j"
    d.mkdir()
    (d / "a.jsonl").write_bytes('\ufeff{"text": "fine"}\n{"text": broken\n{"body": "x"}\n'.encode())  # with a BOM
    cfg = _cfg(str(d), str(tmp_path / "c"), 1000)
    cfg.heldout_fraction = 1e-12
    built, _ = store.build_store(cfg)
    assert built.meta["splits"]["train"]["documents"] == 1
    assert built.meta["splits"]["train"]["skipped"] == dict(undecodable=0, empty=0, not_text=0, no_field=1,
                                                            not_json=1)
    (d / "a.jsonl").write_text('{"body": "fine"}\n{"text": broken\n')
    with pytest.raises(UserError, match=r"a.jsonl: none of its 2 records has the field 'text' \(the first one's "
                                        r"fields: body\); set config.data.text_field to the field holding the text"):
        store.build_store(_cfg(str(d), str(tmp_path / "c"), 1000))


def test_a_resumed_build_reports_only_its_own_throughput(tmp_path, monkeypatch, caplog):
    """What an earlier build finished (whole tasks, or pieces of a compressed task) counts in the totals, not in
    this command's tokens/s and ETA (it once reported billions of tokens/s)."""
    import logging

    clock = [1000.0]
    monkeypatch.setattr(store.time, "time", lambda: clock[0])
    piece = shard_writer.piece_path(str(tmp_path / "train-00002.bin"))
    for j, (docs, tokens, read) in enumerate([(10, 3000, 100), (20, 2000, 200)]):  # an earlier build's pieces
        with open(f"{piece(j)}.json", "w") as fh:
            json.dump({"files": 1, "documents": docs, "skipped": {"empty": 1}, "tokens": tokens,
                       "input_bytes": read}, fh)
    progress = store._Progress("train", total=2000)
    progress.done(0, store._Count(docs=50, tokens=4_000_000, skipped=2, work=900), earlier=True)
    progress.started(2, piece)
    clock[0] += 10
    progress.done(1, store._Count(docs=5, tokens=1000, skipped=0, work=100))  # this command's
    with open(f"{piece(2)}.json", "w") as fh:
        json.dump({"files": 1, "documents": 30, "skipped": {"empty": 3}, "tokens": 1000, "input_bytes": 300}, fh)
    progress.poll()
    with caplog.at_level(logging.INFO):
        progress.log()
        progress.log(final=True)
    # 4,000,000 + 1000 + 3000 + 2000 + 1000 tokens, of which 1000 + 1000 in this command's 10 s; its work 100 + 100
    # bytes in 10 s, 2000 - 1300 left; a piece's record holds its task's documents and skips so far (30, 3)
    assert caplog.messages == [
        "token store train: 85 documents, 4007000 tokens, 200 tokens/s, ETA 35s; 5 records skipped",
        "token store train: 85 documents, 4007000 tokens, 200 tokens/s, ETA 0s; 5 records skipped"]


@contextlib.contextmanager
def _blocking_prepare(tmp_path):
    """prepare with 2 workers, each blocked inside a task (tests/blocking_prepare.py): yields (process, the pids
    of its children: the workers and multiprocessing's resource tracker). Whatever outlives the test is killed."""
    import subprocess
    import sys
    import time

    from conftest import REPO

    markers = tmp_path / "markers"
    markers.mkdir()
    args = [sys.executable, os.path.join(REPO, "tests", "blocking_prepare.py"),
            f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}", "--config.data.source=text",
            f"--config.data.path={_corpus(tmp_path)}", f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.data.shard_chars=3000", "--workers=2"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, SALT_TEST_MARKERS=str(markers), PYTHONPATH=REPO))
    children = []
    try:
        for _ in range(1200):  # both workers inside a task (a hang guard, not a timing)
            if len(os.listdir(markers)) == 2 or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert len(os.listdir(markers)) == 2, proc.communicate(timeout=60)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            children = [int(p) for p in fh.read().split()]
        assert set(int(p) for p in os.listdir(markers)) <= set(children)
        yield proc, children
    finally:
        for pid in [proc.pid, *children]:
            if _alive(pid):
                os.kill(pid, 9)
        proc.communicate(timeout=60)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids, tries=100) -> list:
    import time

    for _ in range(tries):  # at most 10 s: a hang guard (a worker polls its parent every second)
        alive = [p for p in pids if _alive(p)]
        if not alive:
            break
        time.sleep(0.1)
    return alive


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_prepare_workers_end_with_their_parent_even_on_kill_9(tmp_path):
    with _blocking_prepare(tmp_path) as (proc, children):
        assert len(children) >= 2 and all(_alive(p) for p in children)
        proc.kill()  # SIGKILL: the parent cannot stop its pool
        proc.wait(timeout=60)
        assert _wait_gone(children) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_ctrl_c_on_prepare_is_one_line_and_stops_its_workers_at_once(tmp_path):
    import signal

    with _blocking_prepare(tmp_path) as (proc, children):
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # the tasks sleep 600 s: waiting for them would hang here
        assert proc.returncode == 130, err[-3000:]
        assert [ln for ln in err.splitlines() if ln.strip()] == [
            "interrupted: Ctrl-C while building the token store; its finished shards are kept, and the same "
            "command resumes the build"]
        assert _wait_gone(children) == []
