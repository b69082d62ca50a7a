"""Pre-training corpus formats: compressed JSON lines, Parquet, text, Hugging Face datasets.

Every file is written by its own library (zstandard with several frames, gzip, pyarrow with several row
groups, datasets.save_to_disk) from the same documents; each format's store must hold the plain-JSONL
store's tokens, element for element. Also: Parquet row groups split over workers and hosts, a build
killed inside a long .zst file (SIGKILL) that resumes without tokenizing its finished pieces again, and
bad input (skipped and counted, or one line naming the file and the place).
"""

import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from salt_jax.config import base_config
from salt_jax.data import documents, shard_writer, sources, store, tokenizer
from salt_jax.errors import UserError

from conftest import REPO

DOCS = [f"document {i}: " + "é ü ∑ " * (i % 4) + " ".join(f"w{i * 7 + j}" for j in range(20 + i % 37))
        for i in range(240)]
TINY = 1e-12  # a held-out fraction no record reaches: every document trains, in file order


def _lines(docs, **extra) -> bytes:
    return b"".join((json.dumps({"text": d, **extra}, ensure_ascii=False) + "\n").encode() for d in docs)


def _zst(path, data: bytes, frames: int = 3) -> None:
    import zstandard

    step = -(-len(data) // frames)
    with open(path, "wb") as fh:  # frames cut at arbitrary bytes (mid-line): a reader must join them
        for i in range(0, len(data), step):
            fh.write(zstandard.ZstdCompressor(level=3).compress(data[i:i + step]))


def _gz(path, data: bytes) -> None:
    with gzip.open(path, "wb") as fh:
        fh.write(data)


def _parquet(path, texts, rows_per_group=30, field="text", **columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({field: texts, "id": list(range(len(texts))), **columns})
    pq.write_table(table, path, row_group_size=rows_per_group)


WRITERS = {
    "a.jsonl": lambda p, docs: open(p, "wb").write(_lines(docs)),
    "a.jsonl.zst": lambda p, docs: _zst(p, _lines(docs)),
    "a.jsonl.gz": lambda p, docs: _gz(p, _lines(docs)),
    "a.json.gz": lambda p, docs: _gz(p, _lines(docs)),
    "a.parquet": lambda p, docs: _parquet(p, docs),
}


def _cfg(path, cache, shard_chars=4000, fraction=0.2, **kw):
    c = base_config().data
    c.source, c.path, c.cache_dir, c.seq_len, c.heldout_fraction = "text", str(path), str(cache), 16, fraction
    c.shard_chars = shard_chars
    for k, v in kw.items():
        c[k] = v
    return c


def _stream(docs) -> np.ndarray:
    tok = tokenizer.ByteTokenizer()
    return np.concatenate([np.asarray(ids + [tok.eos_id]) for ids in tok.encode(list(docs))]).astype(np.int32)


def _write(tmp_path, name, docs=DOCS) -> str:
    d = tmp_path / name.replace(".", "_")
    d.mkdir()
    WRITERS[name](str(d / name), docs)
    return str(d / name)


def _same_store(a, b) -> None:
    """Equal meta.json (but the source's fingerprint) and byte-identical shards."""
    meta_a, meta_b = dict(a.meta, source_fingerprint=None), dict(b.meta, source_fingerprint=None)
    assert meta_a == meta_b
    for split in documents.SPLITS:
        for shard in a.meta["splits"][split]["shards"]:
            with open(os.path.join(a.directory, shard["file"]), "rb") as fa, \
                    open(os.path.join(b.directory, shard["file"]), "rb") as fb:
                assert fa.read() == fb.read(), shard["file"]


def test_each_format_gives_the_plain_jsonl_stores_tokens(tmp_path):
    plain, _ = store.build_store(_cfg(_write(tmp_path, "a.jsonl"), tmp_path / "c"))
    everything, _ = store.build_store(_cfg(tmp_path / "a_jsonl", tmp_path / "c", fraction=TINY))
    np.testing.assert_array_equal(everything.train.tokens(), _stream(DOCS))
    for name in ("a.jsonl.zst", "a.jsonl.gz", "a.json.gz", "a.parquet"):
        path = _write(tmp_path, name)
        got, _ = store.build_store(_cfg(path, tmp_path / "c", fraction=TINY))
        np.testing.assert_array_equal(got.train.tokens(), everything.train.tokens(), err_msg=name)
        assert got.meta["splits"]["train"]["documents"] == len(DOCS), name
        if name.startswith("a.jsonl."):  # the same records held out: a record's key is its line in the text
            split, _ = store.build_store(_cfg(path, tmp_path / "c"))
            for s in ("train", "heldout"):
                np.testing.assert_array_equal(getattr(split, s).tokens(), getattr(plain, s).tokens(), err_msg=name)
            assert 0 < split.heldout.n_tokens < split.train.n_tokens
    zst, _ = store.build_store(_cfg(tmp_path / "a_jsonl_zst", tmp_path / "c", fraction=TINY))
    pieces = [s["file"] for s in zst.meta["splits"]["train"]["shards"]]
    assert len(pieces) >= 8 and pieces[:2] == ["train-00000-00000.bin", "train-00000-00001.bin"]  # 4000-char pieces


def test_one_glob_mixes_formats_in_file_order(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    chunks = [DOCS[i:i + 40] for i in range(0, 240, 40)]
    WRITERS["a.jsonl"](str(d / "p0.jsonl"), chunks[0])
    WRITERS["a.jsonl.zst"](str(d / "p1.jsonl.zst"), chunks[1])
    WRITERS["a.json.gz"](str(d / "p2.json.gz"), chunks[2])
    WRITERS["a.parquet"](str(d / "p3.parquet"), chunks[3])
    (d / "p4.txt").write_text(chunks[4][0])
    _gz(str(d / "p5.txt.gz"), chunks[5][0].encode())
    _zst(str(d / "p6.txt.zst"), chunks[5][1].encode(), frames=2)
    want = chunks[0] + chunks[1] + chunks[2] + chunks[3] + [chunks[4][0], chunks[5][0], chunks[5][1]]
    cfg = _cfg(str(d / "p*"), tmp_path / "c", shard_chars=3000, fraction=TINY)
    one, _ = store.build_store(cfg, workers=0)
    np.testing.assert_array_equal(one.train.tokens(), _stream(want))
    two, _ = store.build_store(cfg, cache_dir=str(tmp_path / "c2"), workers=2)
    _same_store(one, two)
    (tmp_path / "plain").mkdir()
    WRITERS["a.jsonl"](str(tmp_path / "plain" / "all.jsonl"), want)
    plain, _ = store.build_store(_cfg(tmp_path / "plain", tmp_path / "c", fraction=TINY))
    np.testing.assert_array_equal(one.train.tokens(), plain.train.tokens())
    # a real held-out fraction: each document in exactly one split
    split, _ = store.build_store(_cfg(str(d / "p*"), tmp_path / "c", shard_chars=3000, fraction=0.3))
    info = split.meta["splits"]
    assert info["train"]["documents"] + info["heldout"]["documents"] == len(want)
    assert info["heldout"]["documents"] > 10


def test_parquet_row_groups_split_over_workers_and_hosts(tmp_path):
    path = _write(tmp_path, "a.parquet")  # 240 rows in 8 row groups of 30
    cfg = _cfg(path, tmp_path / "one", shard_chars=9000)
    tasks = sources.make_source(cfg).tasks("train", 9000)
    assert len(tasks) >= 4 and all(len(t) == 1 and t[0].path == path for t in tasks)  # one file, row-group runs
    assert [t[0].start for t in tasks] == sorted({t[0].start for t in tasks}) and tasks[-1][0].stop == 8
    one, _ = store.build_store(cfg, workers=0)
    two, _ = store.build_store(cfg, cache_dir=str(tmp_path / "two"), workers=2)
    _same_store(one, two)
    shared = _cfg(path, tmp_path / "hosts", shard_chars=9000, shared_cache=True)
    out, errors = {}, []

    def host(i):
        try:
            out[i] = store.build_store(shared, workers=0, host=(i, 2))[0]
        except BaseException as e:  # noqa: BLE001 -- re-raised below
            errors.append(e)

    threads = [threading.Thread(target=host, args=(i,)) for i in (1, 0)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors
    _same_store(one, out[0])
    _same_store(one, out[1])


_KILLED_BUILD = """
import os, signal, sys
from salt_jax.data import shard_writer, store
from test_corpora import _cfg
real, written = shard_writer.write_shard, []

def dies_in_the_fifth_piece(docs, path, tok=None):
    if len(written) == 4:
        open(path + ".tmp4242", "wb").write(b"torn")  # the piece being written when the kill came
        os.kill(os.getpid(), signal.SIGKILL)
    written.append(path)
    return real(docs, path, tok)

shard_writer.write_shard = dies_in_the_fifth_piece
store.build_store(_cfg(sys.argv[1], sys.argv[2], shard_chars=2000), workers=0)
"""


def test_a_build_killed_inside_a_zst_file_resumes_after_its_last_piece(tmp_path, monkeypatch):
    path = _write(tmp_path, "a.jsonl.zst")
    clean, _ = store.build_store(_cfg(path, tmp_path / "clean", shard_chars=2000))
    killed = subprocess.run([sys.executable, "-c", _KILLED_BUILD, path, str(tmp_path / "resumed")],
                            cwd=os.path.join(REPO, "tests"), capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")])))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = [os.path.join(tmp_path / "resumed" / "tokens", d) for d in os.listdir(tmp_path / "resumed" / "tokens")
               if d.endswith(".partial")][0]
    finished = sorted(f for f in os.listdir(partial) if f.endswith(".bin"))
    assert finished == [f"train-00000-{j:05d}.bin" for j in range(4)] and "train-00000-00004.bin.tmp4242" in \
        os.listdir(partial)
    kept = {f: os.stat(os.path.join(partial, f)).st_mtime_ns for f in finished}
    encoded = []
    real_encode = tokenizer.ByteTokenizer.encode
    monkeypatch.setattr(tokenizer.ByteTokenizer, "encode", lambda self, docs: encoded.extend(docs) or
                        real_encode(self, docs))
    cfg = _cfg(path, tmp_path / "resumed", shard_chars=2000)
    with open(os.path.join(partial, "train-00000-00003.bin.json")) as fh:
        done = json.load(fh)["documents"]  # read and tokenized before the kill
    resumed, _ = store.build_store(cfg, workers=0)
    _same_store(resumed, clean)
    for f, mtime in kept.items():  # the finished pieces were kept, not written again
        assert os.stat(os.path.join(resumed.directory, f)).st_mtime_ns == mtime
    source = sources.make_source(cfg)
    train, heldout = list(source.documents("train")), list(source.documents("heldout"))
    assert 0 < done < len(train) and encoded == train[done:] + heldout  # only what followed was tokenized
    assert not any(".tmp" in f for f in os.listdir(resumed.directory))


# Bad records planted among good ones, with the cause each is counted under (documents.SKIPS). A blank line is
# not a record.
BAD_LINES = [(b'{"text": "caf\xe9 in latin-1"}\n', "undecodable"), (b'{"text": "cut\n', "not_json"),
             (b'{"body": "no text field"}\n', "no_field"), (b'[1, 2]\n', "no_field"), (b'{"text": null}\n', "not_text"),
             (b'{"text": 5}\n', "not_text"), (b'{"text": ""}\n', "empty"), (b'{"text": " \\n "}\n', "empty")]
BAD_ROWS = [(None, "not_text"), (b"\xff\xfe bad", "undecodable"), (b"", "empty"), (b" \n ", "empty")]
AT = [0, 2, 17, 17, 60, 94, 120, 140]  # before which good records bad ones go (two in a row at 17); and one last


def _planted(bad, n_good=150):
    """(records, the good texts in order, the expected skips per cause): bad records before the good ones at AT
    and after the last, cycling through `bad`."""
    good, records, want = DOCS[:n_good], [], dict.fromkeys(documents.SKIPS, 0)

    def plant():
        record, cause = bad[sum(want.values()) % len(bad)]
        records.append(record)
        want[cause] += 1

    for i, text in enumerate(good):
        for _ in range(AT.count(i)):
            plant()
        records.append(text)
    plant()
    return records, good, want


def _jsonl(records) -> bytes:
    return b"".join(r if isinstance(r, bytes) else _lines([r]) for r in records) + b"\n"  # (+ a blank line)


PLANTED = {
    "a.jsonl": lambda p, records: open(p, "wb").write(_jsonl(records)),
    "a.jsonl.zst": lambda p, records: _zst(p, _jsonl(records), frames=4),
    "a.jsonl.gz": lambda p, records: _gz(p, _jsonl(records)),
    "a.parquet": lambda p, records: _parquet(p, [r.encode() if isinstance(r, str) else r for r in records],
                                             rows_per_group=20),
}


def _docs_of(split) -> list[str]:
    """The documents a store split holds, decoded from its tokens (ByteTokenizer: a document, then EOS)."""
    tokens = split.tokens().tolist()
    out, start = [], 0
    for i, t in enumerate(tokens):
        if t == tokenizer.EOS_ID:
            out.append(bytes(x - 3 for x in tokens[start:i]).decode())
            start = i + 1
    return out


@pytest.mark.parametrize("name", list(PLANTED))
def test_a_bad_record_costs_that_record_only_in_every_format(tmp_path, name):
    """Planted bad records of every kind, at known places: each is skipped and counted under its cause, every
    good record is in the store (its tokens exactly those of the good texts), and kept + skipped is the number
    of records written, with a real held-out split and tasks cut into many ranges / pieces / row groups."""
    records, good, want = _planted(BAD_ROWS if name.endswith(".parquet") else BAD_LINES)
    (tmp_path / "in").mkdir()
    PLANTED[name](str(tmp_path / "in" / name), records)
    cache, _ = store.build_store(_cfg(tmp_path / "in", tmp_path / "c", shard_chars=1500, fraction=TINY))
    np.testing.assert_array_equal(cache.train.tokens(), _stream(good))
    info = cache.meta["splits"]["train"]
    assert info["skipped"] == want and info["documents"] == len(good)
    assert info["documents"] + sum(info["skipped"].values()) == len(records)
    assert len(info["shards"]) >= 5  # (cut into several tasks or pieces)
    split, _ = store.build_store(_cfg(tmp_path / "in", tmp_path / "c", shard_chars=1500, fraction=0.3))
    info = split.meta["splits"]
    train, heldout = _docs_of(split.train), _docs_of(split.heldout)
    assert sorted(train + heldout) == sorted(good) and len(heldout) > 20  # each good record in one split
    assert train == [d for d in good if d in set(train)]  # in file order
    assert [info[s]["documents"] for s in ("train", "heldout")] == [len(train), len(heldout)]
    assert {c: info["train"]["skipped"][c] + info["heldout"]["skipped"][c] for c in want} == want
    assert sum(info[s]["documents"] + sum(info[s]["skipped"].values()) for s in info) == len(records)


def test_whole_files_and_a_mixed_glob_count_every_record(tmp_path, caplog):
    """Whole-document files (plain and compressed) that are not UTF-8 or empty are records skipped like any other;
    the summary line names every cause."""
    d = tmp_path / "gaps"
    d.mkdir()
    records, good, want = _planted(BAD_LINES, n_good=60)
    _zst(str(d / "a.jsonl.zst"), _jsonl(records[:40]))
    open(d / "b.jsonl", "wb").write(_jsonl(records[40:]))
    _gz(str(d / "c.txt.gz"), b"\xff not utf-8 at all")
    (d / "d.txt").write_bytes(b"caf\xe9")
    (d / "e.txt").write_text(" \n\t ")
    (d / "f.txt").write_text("the last document")
    want = dict(want, undecodable=want["undecodable"] + 2, empty=want["empty"] + 1)
    with caplog.at_level(logging.INFO):
        cache, _ = store.build_store(_cfg(d, tmp_path / "c", fraction=TINY), workers=2)
    info = cache.meta["splits"]["train"]
    assert info["skipped"] == want and info["files"] == 6
    assert info["documents"] + sum(want.values()) == len(records) + 4
    np.testing.assert_array_equal(cache.train.tokens(), _stream(good + ["the last document"]))
    summary = [m for m in caplog.messages if m.startswith("token store train: 6 files")]
    assert summary == [f"token store train: 6 files, 61 documents, {cache.train.n_tokens} tokens in 4 shards; "
                       f"records skipped: {want['undecodable']} not UTF-8, {want['empty']} empty, "
                       f"{want['not_text']} null or not a string, {want['no_field']} without the text field, "
                       f"{want['not_json']} not JSON"]


def test_a_wrong_text_field_stops_at_once(tmp_path):
    """Records without the field are skipped, unless a file's first FIELD_CHECK records (or all of them) have none
    with it: a wrong config.data.text_field is one line naming the file, not a store of nothing."""
    from salt_jax.data import files

    cases = {
        "few.jsonl": (_lines(DOCS[:3]).replace(b'"text"', b'"body"'),
                      r"few.jsonl: none of its 3 records has the field 'text' \(the first one's fields: body\); "
                      r"set config.data.text_field to the field holding the text"),
        "one.jsonl.zst": (b'{"body": "x", "id": 1}\n',
                          r"one.jsonl.zst: its only record has no field 'text' \(the first one's fields: body, id\)"),
        "many.jsonl.gz": (_lines(DOCS[:1] * files.FIELD_CHECK).replace(b'"text"', b'"content"') + _lines(DOCS[:5]),
                          r"many.jsonl.gz: none of its first 1000 records has the field 'text'"),
        "array.json": (json.dumps([{"text": d} for d in DOCS[:5]], indent=1).encode(),
                       r"array.json: none of its \d+ lines is a JSON object; give JSON lines \(one object per line\), "
                       r"or name the file .txt"),
    }
    write = {".jsonl": lambda p, b: open(p, "wb").write(b), ".zst": lambda p, b: _zst(p, b, frames=1),
             ".gz": _gz, ".json": lambda p, b: open(p, "wb").write(b)}
    for name, (data, message) in cases.items():
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        write[os.path.splitext(name)[1]](str(d / name), data)
        with pytest.raises(UserError, match=message):
            store.build_store(_cfg(d, tmp_path / "c", fraction=TINY))
    # fewer bad records than FIELD_CHECK before the first good one: skipped and counted
    d = tmp_path / "late"
    d.mkdir()
    open(d / "a.jsonl", "wb").write(b'{"body": 1}\n' * 999 + _lines(DOCS[:4]))
    late, _ = store.build_store(_cfg(d, tmp_path / "c", fraction=TINY))
    assert late.meta["splits"]["train"]["skipped"]["no_field"] == 999
    np.testing.assert_array_equal(late.train.tokens(), _stream(DOCS[:4]))


def _progress_lines(messages, split="train") -> list[tuple[int, int, str]]:
    """(documents, tokens, ETA) of each progress line of `split`."""
    found = [re.match(rf"token store {split}: (\d+) documents, (\d+) tokens, \d+ tokens/s, ETA (\S+);", m)
             for m in messages]
    return [(int(m.group(1)), int(m.group(2)), m.group(3)) for m in found if m]


def test_the_progress_line_moves_inside_one_compressed_file(tmp_path, monkeypatch, caplog):
    """A task that reads a compressed stream counts up to its last finished piece: before each piece is written,
    the progress line shows exactly the documents and tokens of the pieces before it (from their records)."""
    made = []

    class Recorded(store._Progress):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.every_s = 3600  # (this test logs the line itself, before each piece)
            made.append(self)

    real = shard_writer.write_shard

    def logs_first(docs, path, tok=None):
        made[-1].poll()
        made[-1].log()
        return real(docs, path, tok)

    monkeypatch.setattr(store, "_Progress", Recorded)
    monkeypatch.setattr(shard_writer, "write_shard", logs_first)
    path = _write(tmp_path, "a.jsonl.zst")
    with caplog.at_level(logging.INFO):
        built, _ = store.build_store(_cfg(path, tmp_path / "c", shard_chars=2000, fraction=TINY))
    pieces = [json.load(open(os.path.join(built.directory, f"{s['file']}.json")))
              for s in built.meta["splits"]["train"]["shards"]]
    assert len(pieces) >= 8
    tokens = np.cumsum([0] + [p["tokens"] for p in pieces]).tolist()
    want = [(0, 0, "?")] + [(p["documents"], tokens[j + 1]) for j, p in enumerate(pieces[:-1])]
    got = _progress_lines(caplog.messages)
    assert [g[:2] for g in got[1:-1]] == [w[:2] for w in want[1:]] and got[0] == want[0]
    assert all(eta != "?" for _, _, eta in got[1:])  # the compressed bytes read so far give an ETA
    assert got[-1] == (len(DOCS), built.train.n_tokens, "0s")


def test_malformed_input_is_one_line_naming_the_file_and_place(tmp_path):
    data = _lines(DOCS)
    d = tmp_path / "trunc"
    d.mkdir()
    _zst(str(d / "a.jsonl.zst"), data)  # read first: its pieces are finished when the next file fails
    _zst(str(d / "b.jsonl.zst"), data)
    raw = open(d / "b.jsonl.zst", "rb").read()
    open(d / "b.jsonl.zst", "wb").write(raw[:len(raw) * 2 // 3])
    cfg = _cfg(str(d / "*.zst"), tmp_path / "c", shard_chars=2000, fraction=TINY)
    with pytest.raises(UserError, match=r"b.jsonl.zst: the zstd stream ends inside a member \(a truncated file\) "
                                        r"after byte \d+ of its decompressed text; re-download the file or remove it"):
        store.build_store(cfg)
    partial = [os.path.join(tmp_path / "c" / "tokens", p) for p in os.listdir(tmp_path / "c" / "tokens")
               if p.endswith(".partial")][0]
    assert "train-00000.bin.json" in os.listdir(partial)  # a.jsonl.zst's task, all its pieces, kept
    open(d / "b.jsonl.zst", "wb").write(raw + b"not a zstd frame")  # (zstd has no checksum by default)
    with pytest.raises(UserError, match=r"b.jsonl.zst: corrupt zstd data \(.*\) after byte \d+ of its"):
        store.build_store(cfg)
    os.remove(d / "b.jsonl.zst")
    cases = {
        "b.jsonl.gz": (lambda p: open(p, "wb").write(gzip.compress(data)[:-30]),
                       r"b.jsonl.gz: the gzip stream ends inside a member \(a truncated file\) after byte \d+"),
        "c.parquet": (lambda p: open(p, "wb").write(b"PAR1" + b"\x00" * 100),
                      r"c.parquet: not a readable Parquet file \(.*\); re-download it or remove it"),
        "d.parquet": (lambda p: _parquet(p, DOCS[:5], field="body"),
                      r"d.parquet: no column 'text' \(its columns: body, id\); set config.data.text_field"),
        "e.jsonl.zst": (lambda p: _zst(p, _lines(DOCS[:4]).replace(b'"text"', b'"body"')),
                        r"e.jsonl.zst: none of its 4 records has the field 'text'"),
    }
    for name, (write, message) in cases.items():
        (tmp_path / name).mkdir()
        write(str(tmp_path / name / name))
        with pytest.raises(UserError, match=message):
            store.build_store(_cfg(tmp_path / name / name, tmp_path / "c", fraction=TINY))


def test_hf_source_from_save_to_disk_and_local_files_equals_the_jsonl_store(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    jsonl, _ = store.build_store(_cfg(_write(tmp_path, "a.jsonl"), tmp_path / "c", fraction=TINY))
    with_null = DOCS[:100] + [None] + DOCS[100:]
    datasets.Dataset.from_dict({"text": with_null, "id": list(range(241))}).save_to_disk(str(tmp_path / "saved"))
    hf = lambda name, **kw: _cfg("", tmp_path / "c", fraction=TINY, source="hf", hf_dataset=name, **kw)  # noqa: E731
    saved, _ = store.build_store(hf(str(tmp_path / "saved")))
    np.testing.assert_array_equal(saved.train.tokens(), jsonl.train.tokens())
    assert saved.meta["splits"]["train"]["skipped"]["not_text"] == 1 and saved.meta["source"] == "hf"
    (tmp_path / "files").mkdir()  # a directory of data files, read by datasets.load_dataset(streaming=True)
    _parquet(str(tmp_path / "files" / "train-0.parquet"), DOCS[:120])
    _parquet(str(tmp_path / "files" / "train-1.parquet"), DOCS[120:])
    streamed, _ = store.build_store(hf(str(tmp_path / "files"), shard_chars=3000), workers=2)
    np.testing.assert_array_equal(streamed.train.tokens(), jsonl.train.tokens())
    # named splits: the held-out split is hf_heldout_split's records
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:200]}),
                          "validation": datasets.Dataset.from_dict({"text": DOCS[200:]})}
                         ).save_to_disk(str(tmp_path / "dict"))
    named, _ = store.build_store(hf(str(tmp_path / "dict"), hf_heldout_split="validation"))
    np.testing.assert_array_equal(named.train.tokens(), _stream(DOCS[:200]))
    np.testing.assert_array_equal(named.heldout.tokens(), _stream(DOCS[200:]))
    # a real held-out fraction: records of hf_split held out by a hash of their index
    hashed, _ = store.build_store(hf(str(tmp_path / "saved"), heldout_fraction=0.2))
    info = hashed.meta["splits"]
    assert info["train"]["documents"] + info["heldout"]["documents"] == 240 and info["heldout"]["documents"] > 20
    for cfg, message in ((hf(str(tmp_path / "saved"), text_field="body"), r"text_field='body': .* has columns "
                                                                          r"text, id; set text_field"),
                         (hf(str(tmp_path / "dict"), hf_split="test"), r"hf_split='test': .* has splits train, "
                                                                       r"validation"),
                         (hf(str(tmp_path / "nope")), r"hf_dataset=.*nope: no such directory")):
        with pytest.raises(UserError, match=message):
            sources.make_source(cfg)
