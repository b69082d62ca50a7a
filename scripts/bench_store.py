"""Token-store benchmark: build throughput and its scaling with workers, peak memory vs corpus size, loader rate;
the same per corpus format; a large mixed-format build.

    python scripts/bench_store.py [--out=DIR] [--sizes_mb=100,400] [--workers=1,2] [--engines=local,ray]
    python scripts/bench_store.py --formats=jsonl,jsonl.zst,json.gz,parquet [--sizes_mb=50,200] [--workers=1]
    python scripts/bench_store.py --mixed_mb=1000 [--workers=2]

Writes synthetic JSONL corpora (Zipf-distributed words of a fixed pseudo-language,
so SentencePiece has real work), then for each (size, workers) runs
`python -m salt_jax.prepare` in a fresh process and records wall time, tokens
and the peak RSS of the largest process (the builder, or a worker). The
SentencePiece tokenizer is trained once, on the smallest corpus, and reused.
Finally it times the step-indexed loader (`Batches.numpy`) at seq 2048 and
compares it with the tokens per second the paper's 2.8B student consumes on
one TPU v5p host at 50% MFU (salt_jax.model.flops), and the cost of one step's row
indices at the Pile's size against a full permutation. Prints a table and writes
DIR/bench_store.json.

With --formats, each JSONL corpus is also written as one .jsonl.zst, .json.gz and
Parquet file (the same documents; each format's own library), and each format is
built at each size with --workers (tokens/s per worker, peak RSS) instead. With
--mixed_mb, a corpus of that many MB of JSONL text in 50 MB files, the formats in
turn, is built once with --workers (throughput and peak RSS). They write
DIR/bench_formats.json (DIR/bench_mixed.json for --mixed_mb alone).

With --engines=local,ray the largest --workers count of each size is also built
with `--engine=ray` (a local Ray of that many CPUs, started by the command):
the wall time then includes Ray's start, and `build` (the store's own time,
from its last log line) is the time from the first task to meta.json.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from salt_jax import cli  # noqa: E402
from salt_jax.config import base_config  # noqa: E402
from salt_jax.data import batches, store  # noqa: E402
from salt_jax.model import flops, presets  # noqa: E402


def write_corpus(path: str, mb: int, seed: int = 0) -> None:
    """`mb` MB of JSONL records of ~2 KB each: Zipf-distributed words of a 20K-word pseudo-language (the
    words are the same for every seed; the seed draws the text)."""
    if os.path.exists(path) and os.path.getsize(path) >= mb * 1e6:
        return
    rng = np.random.default_rng(0)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # a pseudo-language: 70 syllables
    words = np.array(sorted({"".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(30000)}))[:20000]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    rng = np.random.default_rng(seed)
    with open(path + ".tmp", "w") as fh:
        written = 0
        while written < mb * 1e6:
            for row in words[rng.choice(len(words), (1000, 300), p=p)]:  # 1,000 records of 300 words at once
                rec = json.dumps({"text": " ".join(row)}) + "\n"
                fh.write(rec)
                written += len(rec)
    os.replace(path + ".tmp", path)


def convert(jsonl: str, path: str, group_rows: int = 8192) -> str:
    """The documents of `jsonl` as one file of the format `path` names (.jsonl.zst, .json.gz, .parquet, or
    .jsonl: a copy), written as a stream by that format's library (Parquet: row groups of `group_rows`)."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("text", pa.string())])
        with open(jsonl) as src, pq.ParquetWriter(tmp, schema) as writer:
            while texts := [json.loads(line)["text"] for line in itertools.islice(src, group_rows)]:
                writer.write_table(pa.table({"text": texts}, schema=schema))
    else:
        if path.endswith(".zst"):
            import zstandard

            opener = lambda p: zstandard.open(p, "wb", cctx=zstandard.ZstdCompressor(level=3))  # noqa: E731
        elif path.endswith(".gz"):
            opener = lambda p: gzip.open(p, "wb", compresslevel=6)  # noqa: E731
        else:
            opener = lambda p: open(p, "wb")  # noqa: E731
        with open(jsonl, "rb") as src, opener(tmp) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, path)
    return path


def build(corpus: str, cache: str, workers: int, model_file: str, engine: str = "local",
          shard_chars: int = 8_000_000) -> dict:
    """One prepare run in a fresh process: wall seconds, the store's own build seconds, tokens, peak RSS (MB) of
    its largest process (with Ray: of the command and the processes it waited for, not Ray's own)."""
    args = [sys.executable, "-m", "salt_jax.prepare", "--config=configs/test_tiny.py",
            "--config.data.source=text", f"--config.data.path={corpus}", f"--config.data.cache_dir={cache}",
            "--config.data.tokenizer.kind=sentencepiece", f"--config.data.tokenizer.model_file={model_file}",
            "--config.data.max_files=0", f"--config.data.shard_chars={shard_chars}", f"--workers={workers}",
            f"--engine={engine}"]
    wrapper = ("import resource, subprocess, sys, time; t = time.time(); r = subprocess.run(sys.argv[1:], "
               "capture_output=True, text=True); print(r.returncode, time.time() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stdout); "
               "sys.stderr.write(r.stderr[-2000:])")
    out = subprocess.run([sys.executable, "-c", wrapper, *args], cwd=REPO, capture_output=True, text=True)
    rc, seconds, rss_kb = out.stdout.split()[:3]
    if int(rc) != 0:
        raise SystemExit(f"prepare failed:\n{out.stderr}")
    build_s = float(re.findall(r"token store written to \S+ in ([0-9.]+)s", out.stdout)[-1])
    meta_dir = [d for d in os.listdir(os.path.join(cache, "tokens")) if "." not in d][0]
    with open(os.path.join(cache, "tokens", meta_dir, "meta.json")) as fh:
        meta = json.load(fh)
    tokens = sum(meta["splits"][s]["tokens"] for s in ("train", "heldout"))
    return {"seconds": float(seconds), "build_seconds": build_s, "tokens": tokens,
            "tokens_per_s": tokens / float(seconds), "peak_rss_mb": int(rss_kb) / 1024,
            "directory": os.path.join(cache, "tokens", meta_dir), "engine": engine,
            "documents": sum(meta["splits"][s]["documents"] for s in ("train", "heldout")),
            "shards": sum(len(meta["splits"][s]["shards"]) for s in ("train", "heldout"))}


def train_tokenizer(corpus: str, out: str) -> str:
    from salt_jax.data import sources, tokenizer

    c = base_config().data
    c.source, c.path, c.max_files = "text", corpus, 0
    c.tokenizer.kind, c.tokenizer.vocab_size, c.tokenizer.max_train_lines = "sentencepiece", 8192, 50_000
    tok = tokenizer.make_tokenizer(c.tokenizer, sources.make_source(c), out)
    return tok.model_file


def loader_rate(directory: str, batch: int, seq: int, steps: int = 500) -> float:
    """Tokens per second of Batches.numpy (this host's rows of the global batch of step s)."""
    cache = store.TokenStore(directory, seq)
    b = batches.Batches(cache.train, batch, seed=0)
    b.numpy(0)
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        b.numpy(s)
    return steps * batch * (seq + 1) / (time.perf_counter() - t0)


def index_cost(n_rows: int, batch: int, steps: int = 100) -> dict:
    """Seconds per step of the global batch's row indices at `n_rows` (the seeded bijective shuffle),
    against building one epoch's permutation of all rows (the data order before it)."""
    t0 = time.perf_counter()
    for s in range(steps):
        batches.batch_indices(s, batch, n_rows, seed=0)
    shuffle_s = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    perm = np.random.default_rng([0, 0]).permutation(n_rows)
    return {"n_rows": n_rows, "global_batch": batch, "shuffle_s_per_step": shuffle_s,
            "permutation_s": time.perf_counter() - t0, "permutation_mb": perm.nbytes / 1e6}


def paper_demand(host_chips: int = 4, mfu: float = 0.5, seq: int = 2048) -> dict:
    """Tokens/s one TPU v5p host trains the paper's 2.8B student at (no teacher: the most tokens per second)."""
    student = presets.model_config("paper-2.8b")
    per_token = flops.train_flops_per_token(student, seq)
    peak = flops.peak_flops("TPU v5")
    return {"flops_per_token": per_token, "host_peak_flops": host_chips * peak,
            "tokens_per_s": mfu * host_chips * peak / per_token}


def _report(label: str, r: dict, workers: int) -> None:
    print(f"{label}  workers {workers}  {r['seconds']:7.1f} s (build {r['build_seconds']:.1f} s)  "
          f"{r['tokens'] / 1e6:8.1f}M tokens  "
          f"{r['tokens_per_s'] / 1e6:6.2f}M tok/s  ({r['tokens_per_s'] / max(workers, 1) / 1e6:.2f}M per worker)  "
          f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)


def bench_formats(out: str, corpora: dict, formats: list[str], workers: int, model_file: str,
                  shard_chars: int = 8_000_000) -> list[dict]:
    """Each format of each corpus, built with `workers`: one file per format, from the same documents."""
    runs = []
    for mb, jsonl in corpora.items():
        for fmt in formats:
            path = convert(jsonl, os.path.join(out, f"formats-{mb}mb", f"corpus.{fmt}"))
            cache = os.path.join(out, f"cache-{mb}mb-{fmt}-w{workers}")
            subprocess.run(["rm", "-rf", cache])
            r = build(path, cache, workers, model_file, shard_chars=shard_chars)
            runs.append(dict(r, corpus_mb=mb, format=fmt, workers=workers, file_mb=os.path.getsize(path) / 1e6))
            _report(f"{mb:>5} MB  {fmt:<9}", r, workers)
    return runs


def bench_mixed(out: str, mb: int, workers: int, model_file: str, file_mb: int = 50) -> dict:
    """`mb` MB of JSONL text as files of `file_mb` MB (each its own text), the formats in turn, in one glob."""
    directory = os.path.join(out, f"mixed-{mb}mb")
    os.makedirs(directory, exist_ok=True)
    formats = ["jsonl", "jsonl.zst", "json.gz", "parquet"]
    for i in range(max(mb // file_mb, 1)):
        jsonl = os.path.join(out, "mixed-parts", f"part-{i:03d}.jsonl")
        os.makedirs(os.path.dirname(jsonl), exist_ok=True)
        write_corpus(jsonl, min(file_mb, mb), seed=100 + i)
        convert(jsonl, os.path.join(directory, f"part-{i:03d}.{formats[i % len(formats)]}"))
    cache = os.path.join(out, f"cache-mixed-{mb}mb-w{workers}")
    subprocess.run(["rm", "-rf", cache])
    r = build(os.path.join(directory, "part-*"), cache, workers, model_file)
    r = dict(r, corpus_mb=mb, workers=workers, files=len(os.listdir(directory)),
             disk_mb=sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)) / 1e6)
    _report(f"{mb:>5} MB  mixed {r['files']} files", r, workers)
    return r


def main() -> None:
    cli.keep_jax_off_an_absent_tpu()  # (a host with libtpu and no TPU: the CPU, quietly)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/bench_store")
    ap.add_argument("--sizes_mb", default="100,400")
    ap.add_argument("--workers", default="0,1,2")  # 0: in the builder process, with SentencePiece's threads
    ap.add_argument("--formats", default="")  # e.g. jsonl,jsonl.zst,json.gz,parquet: the per-format table instead
    ap.add_argument("--mixed_mb", type=int, default=0)  # > 0: one mixed-format build of this many MB instead
    ap.add_argument("--engines", default="local")  # local,ray: also the largest --workers as Ray tasks
    ap.add_argument("--shard_chars", type=int, default=8_000_000)  # bytes of text per task (config.data.shard_chars)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sizes = [int(x) for x in a.sizes_mb.split(",")]
    workers = [int(x) for x in a.workers.split(",")]
    corpora = {mb: os.path.join(a.out, f"corpus-{mb}mb.jsonl") for mb in sizes}
    for mb, path in corpora.items():
        write_corpus(path, mb)
    model_file = train_tokenizer(corpora[sizes[0]], os.path.join(a.out, "tok"))
    if a.formats or a.mixed_mb:
        found = {"cpu_count": os.cpu_count(), "tokenizer_corpus_mb": sizes[0]}
        if a.formats:
            found["formats"] = bench_formats(a.out, corpora, a.formats.split(","), max(workers), model_file,
                                             a.shard_chars)
        if a.mixed_mb:
            found["mixed"] = bench_mixed(a.out, a.mixed_mb, max(workers), model_file)
        name = "bench_formats.json" if a.formats else "bench_mixed.json"
        with open(os.path.join(a.out, name), "w") as fh:
            json.dump(found, fh, indent=1)
        return
    runs = []
    engines = a.engines.split(",")
    for mb in sizes:
        cases = [("local", w) for w in (workers if mb == sizes[0] else [max(workers)])]
        cases += [(e, max(max(workers), 1)) for e in engines if e != "local"]
        for engine, w in cases:
            cache = os.path.join(a.out, f"cache-{mb}mb-w{w}-{engine}")
            subprocess.run(["rm", "-rf", cache])
            r = build(corpora[mb], cache, w, model_file, engine, a.shard_chars)
            runs.append(dict(r, corpus_mb=mb, workers=w))
            _report(f"{mb:>5} MB  {engine:>5}", r, w)
    demand = paper_demand()
    host_batch = 256 // 16  # the paper's global batch 256 over a v5p-64 slice's 16 hosts
    rate = loader_rate(runs[-1]["directory"], host_batch, 2048)
    print(f"loader: {rate / 1e6:.1f}M tokens/s per host (batch {host_batch} x 2048); the paper's 2.8B student on "
          f"one v5p host at 50% MFU needs {demand['tokens_per_s']:,.0f} tokens/s -> {rate / demand['tokens_per_s']:.0f}x")
    pile = index_cost(300_000_000_000 // 2048, 256)  # the Pile (~300B tokens) as rows of 2048
    print(f"row indices of one step at {pile['n_rows']:,} rows (global batch 256): {pile['shuffle_s_per_step'] * 1e3:.2f}"
          f" ms; one epoch's full permutation instead: {pile['permutation_s']:.1f} s, {pile['permutation_mb']:.0f} MB")
    with open(os.path.join(a.out, "bench_store.json"), "w") as fh:
        json.dump({"builds": runs, "loader_tokens_per_s": rate, "loader_host_batch": host_batch, "indices": pile,
                   "paper_host_demand": demand, "cpu_count": os.cpu_count()}, fh, indent=1)


if __name__ == "__main__":
    main()
