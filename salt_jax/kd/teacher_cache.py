"""The teacher cache: the teacher's sparse targets for every KD-phase batch, computed once, stored beside
the tokens.

A run with config.salt.teacher_logits=cache trains its KD phase from the
teacher cache instead of running the teacher inside the step (salt_jax.kd.sparse
says what is stored and how the loss reads it). Batches are step-indexed, so
the targets of step s belong to the batch of step s of any run with the same
token store, data seed, batch size and sequence length: students that differ
in anything else (model, learning rate, KD weight, ...) share one cache.

Layout: <token store>/teacher_logits/<kind>-k<k>-<key>/ with one file per
(step, host row range), `step0000012-rows0-8.npz` (ids, logp, other,
target_logp), each written atomically, and `manifest.json` once every step is
there. Every host runs the sharded teacher pass together and writes the rows
it holds; a reader with another host count reads the files covering its rows.
A build that stops (kill, preemption) resumes at the first missing step.

`build_teacher_cache` builds a run's cache where missing (the run on demand,
and `python -m salt_jax.teacher_cache` ahead of it); `cached_teacher` is the
run's Teacher that reads it, the coming steps' targets read ahead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from salt_jax import paths
from salt_jax.data.alignment import VERSION as ALIGNMENT_VERSION
from salt_jax.data.alignment import AlignedBatches
from salt_jax.data.batches import Batches, Prefetcher, host_rows, training_batches
from salt_jax.errors import UserError
from salt_jax.hf.source import TeacherSource, resolve
from salt_jax.kd import alm, losses, sparse
from salt_jax.kd import teacher as teacher_lib
from salt_jax.model import sharding


TEACHER_LOGITS = ("online", "cache")  # config.salt.teacher_logits: the teacher runs in the step, or the teacher cache
CACHE_DTYPES = ("float16", "float32")  # config.salt.cache_dtype: the stored log-probs' dtype


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a cache holds: everything its contents depend on (its directory name hashes these)."""

    teacher: str  # the teacher checkpoint's fingerprint
    store: str  # the token store's directory name (source, tokenizer and sequence length)
    data_seed: int
    batch_size: int
    seq_len: int
    steps: int  # the KD-phase steps covered: 0 .. steps - 1
    kind: str  # topk | topk_other | sampled (topk and topk_other store the same thing) | alm (across tokenizers)
    k: int
    temperature: float
    dtype: str  # one of CACHE_DTYPES
    teacher_tokenizer: str = ""  # alm: the teacher's tokenizer (the pair's other half is the store's)
    teacher_len: int = 0  # alm: the teacher's tokens per window
    alignment: int = 0  # alm: salt_jax.data.alignment.VERSION (the chunk numbers the cached values follow)

    @classmethod
    def of(cls, config, teacher_fingerprint: str, store_dir: str, steps: int, aligner=None) -> "Spec":
        s, d = config.salt, config.data
        common = (teacher_fingerprint, store_dir.rstrip("/").rsplit("/", 1)[-1], int(d.seed), int(d.batch_size),
                  int(d.seq_len), int(steps))
        if aligner is not None:  # chunk log-likelihoods: float32 (they reach -100s; float16 keeps 3 digits)
            return cls(*common, "alm", 0, float(s.temperature), "float32", aligner.teacher_fingerprint,
                       aligner.teacher_len, ALIGNMENT_VERSION)
        return cls(*common, s.cache_targets, int(s.cache_k), float(s.temperature), s.cache_dtype)

    @property
    def stored(self) -> str:
        return self.kind if self.kind in ("sampled", "alm") else "topk"

    @property
    def fields(self) -> tuple[str, ...]:
        """The arrays stored per step (the KD step's teacher input, in order)."""
        return alm.ChunkTargets._fields if self.kind == "alm" else sparse.Targets._fields

    def targets(self, arrays):
        """`arrays` (in `fields` order) as the KD step's teacher input."""
        return alm.ChunkTargets(*arrays) if self.kind == "alm" else sparse.Targets(*arrays)

    def directory(self, store_dir: str) -> str:
        fields = dataclasses.asdict(self)
        fields.update(kind=self.stored, steps=0)  # one cache serves both top-k readings, and shorter phases
        if self.kind != "alm":
            del fields["teacher_tokenizer"], fields["teacher_len"], fields["alignment"]  # (earlier caches' keys)
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
        return paths.join(store_dir, "teacher_logits", f"{self.stored}-k{self.k}-{key}")


def _file(directory: str, step: int, rows: slice) -> str:
    return paths.join(directory, f"step{step:07d}-rows{rows.start}-{rows.stop}.npz")


def _program(model, shardings, spec: Spec, mesh, pad_id: int):
    """(teacher params, tokens, step) -> this batch's sparse targets, sharded like the batch (alm: (teacher
    params, an AlignedBatch, step) -> its chunk log-likelihoods, salt_jax.kd.alm.ChunkTargets)."""
    batch = sharding.batch_sharding(mesh)
    if spec.kind == "alm":
        def chunks_fn(params, aligned, step):
            del step
            logits = model.apply({"params": params}, aligned.teacher_tokens[:, :-1])
            logp1, logp = alm.target_logprobs(logits, aligned.teacher_tokens[:, 1:], spec.temperature)
            return alm.teacher_chunks(logp1, logp, aligned.teacher_chunks, spec.seq_len)
        return jax.jit(chunks_fn, in_shardings=(shardings, batch, None), out_shardings=alm.ChunkTargets(batch, batch))

    def targets_fn(params, tokens, step):
        inputs, targets, _ = losses.split_tokens(tokens, pad_id)
        key = jax.random.fold_in(jax.random.key(spec.data_seed), step)
        return sparse.from_logits(model.apply({"params": params}, inputs), targets, spec.k, spec.stored,
                                  spec.temperature, key)

    return jax.jit(targets_fn, in_shardings=(shardings, batch, None),
                   out_shardings=sparse.Targets(batch, batch, batch, batch))


def _local_rows(x: jax.Array) -> np.ndarray:
    """This host's rows of a batch-sharded global array, in order."""
    parts = {}
    for shard in x.addressable_shards:
        parts.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
    return np.concatenate([parts[k] for k in sorted(parts)])


def _encode(t, spec: Spec, vocab: int) -> bytes:
    if spec.kind == "alm":
        buf = io.BytesIO()
        np.savez(buf, **{name: np.asarray(a, np.float32) for name, a in zip(spec.fields, t)})
        return buf.getvalue()
    dt = np.dtype(spec.dtype)
    ids = np.asarray(t.ids, np.uint16 if vocab <= 2 ** 16 else np.int32)
    buf = io.BytesIO()
    np.savez(buf, ids=ids, logp=np.asarray(t.logp, dt), other=np.asarray(t.other, dt),
             target_logp=np.asarray(t.target_logp, dt))
    return buf.getvalue()


def complete(directory: str, steps: int) -> dict | None:
    """The manifest of a cache in `directory` that covers `steps` KD steps, or None (missing or shorter)."""
    path = paths.join(directory, "manifest.json")
    manifest = paths.read_json(path) if paths.exists(path) else None
    return manifest if manifest and manifest.get("steps", 0) >= steps else None


def build(teacher, batches: Batches, spec: Spec, directory: str, mesh, pad_id: int, vocab: int,
          written: Callable[[int], None] = lambda step: None) -> dict:
    """Writes the targets of steps 0 .. spec.steps - 1 that are missing (a cache built for a shorter KD phase
    is extended); returns the manifest.

    `written(step)` runs after each step's file is on disk (the kill drill's hook).
    """
    manifest_path = paths.join(directory, "manifest.json")
    done = complete(directory, spec.steps)
    if done:
        return done
    if paths.exists(manifest_path):
        logging.info("teacher cache: %d steps cached, extending to %d", paths.read_json(manifest_path)["steps"],
                     spec.steps)
    paths.makedirs(directory)
    rows = host_rows(spec.batch_size)
    first = next((s for s in range(spec.steps) if not paths.exists(_file(directory, s, rows))), spec.steps)
    if jax.process_count() > 1:  # every host runs the same (collective) steps: from the earliest missing one
        first = int(multihost_utils.process_allgather(np.int64(first)).min())
    if first:
        logging.info("teacher cache: resuming at step %d of %d", first, spec.steps)
    fn = _program(teacher.model, teacher.shardings, spec, mesh, pad_id)
    t0, last = time.time(), time.time()
    for step in range(first, spec.steps):
        tokens = batches.device(step, sharding.batch_sharding(mesh))
        with sharding.on_mesh(mesh):
            out = fn(teacher.params, tokens, np.int32(step))
        local = spec.targets([_local_rows(a) for a in out])
        paths.write_atomic(_file(directory, step, rows), _encode(local, spec, vocab))
        written(step)
        if time.time() - last > 10:
            logging.info("teacher cache: step %d/%d", step + 1, spec.steps)
            last = time.time()
    seconds = time.time() - t0
    size = paths.getsize(_file(directory, 0, rows)) if spec.steps else 0
    manifest = {**dataclasses.asdict(spec), "kind": spec.stored, "complete": True,
                "hosts": jax.process_count(), "build_seconds": seconds,
                "bytes_per_token": size / max(rows.stop - rows.start, 1) / spec.seq_len}
    if jax.process_index() == 0:
        paths.write_json(manifest_path, manifest)
    logging.info("teacher cache: %d steps in %.1f s, %.0f bytes per token, in %s", spec.steps, seconds,
                 manifest["bytes_per_token"], directory)
    return manifest


class _Files:
    """This host's rows of each step's cached targets, read from the files that hold them (the Batches-like
    source a Prefetcher reads ahead: `numpy(step)`)."""

    def __init__(self, directory: str, manifest: dict, spec: Spec):
        self.directory, self.spec = directory, spec
        self.per_file = spec.batch_size // manifest["hosts"]  # rows per file: the writing host count's share

    CASTS = (np.int32, np.float32, np.float32, np.float32)  # as the KD step takes them (alm: all float32)

    def numpy(self, step: int) -> list[np.ndarray]:
        """Rows host_rows(batch) of step `step` (one file when the host count is the cache's), cast to the
        step's dtypes (in the read-ahead thread, when there is one)."""
        rows, per = host_rows(self.spec.batch_size), self.per_file
        parts = []
        for first in range(rows.start - rows.start % per, rows.stop, per):
            path = _file(self.directory, step, slice(first, first + per))
            try:
                with paths.open(path, "rb") as fh, np.load(io.BytesIO(fh.read())) as f:
                    arrays = [f[name] for name in self.spec.fields]
            except (OSError, ValueError, KeyError) as e:
                raise UserError(f"{path}: unreadable teacher cache file ({e}); delete {self.directory} to "
                                "rebuild the cache") from None
            lo, hi = max(rows.start, first) - first, min(rows.stop, first + per) - first
            parts.append([a[lo:hi] for a in arrays])
        casts = self.CASTS if self.spec.kind != "alm" else (np.float32,) * len(self.spec.fields)
        return [np.concatenate(p).astype(c) for p, c in zip(zip(*parts), casts)]


class CachedTeacher(teacher_lib.Teacher):
    """The Teacher of a run that reads cached logits (salt_jax.kd.teacher.Teacher): `inputs(step)` is that
    batch's sparse targets on the mesh, no model.

    With `prefetch` > 0 the targets of the coming steps are read ahead in a
    background thread (salt_jax.data.batches.Prefetcher, from the first step
    asked for), as the batches are: a KD step does not wait for its file; with
    `device_ahead` (the default) that thread also copies them onto the mesh,
    so the step does not wait for the copy either.
    """

    model = None
    sparse_targets = True
    aligned = False
    config = None  # no teacher FLOPs at training time: they were spent building the cache

    def __init__(self, directory: str, manifest: dict, spec: Spec, mesh, checkpoint: str, prefetch: int = 0):
        if not manifest.get("complete") or manifest["steps"] < spec.steps:
            raise UserError(f"{directory}: the teacher cache covers {manifest.get('steps')} steps, the KD phase "
                            f"needs {spec.steps}; delete the directory to rebuild it")
        pair = (manifest.get("kind"), manifest.get("teacher_tokenizer", ""), manifest.get("teacher_len", 0),
                manifest.get("alignment", 0))
        if pair != (spec.stored, spec.teacher_tokenizer, spec.teacher_len, spec.alignment):
            raise UserError(f"{directory}: the teacher cache holds {pair[0]} targets for teacher tokenizer "
                            f"{pair[1] or 'the student'} ({pair[2]} tokens per window, alignment v{pair[3]}), this "
                            f"run needs {spec.stored} for {spec.teacher_tokenizer or 'the student'} "
                            f"({spec.teacher_len}, v{spec.alignment}); delete the directory to rebuild it")
        self.directory, self.manifest, self.spec, self.mesh = directory, manifest, spec, mesh
        self.fingerprint, self.checkpoint, self.prefetch = spec.teacher, checkpoint, prefetch
        batch = sharding.batch_sharding(mesh)
        self.shardings = spec.targets([batch] * len(spec.fields))
        self.aligned = spec.kind == "alm"  # (chunk log-likelihoods of a teacher with another tokenizer)
        self._files = _Files(directory, manifest, spec)
        self._ahead: Prefetcher | None = None
        self.device_ahead = True  # (False: the read-ahead thread reads only; the copy is made by `inputs`)

    def identity(self) -> dict:
        return {"checkpoint": self.checkpoint, "fingerprint": self.fingerprint, "cache": self.directory}

    def _place(self, arrays: list[np.ndarray]):
        """This host's rows of one step's targets as the global arrays on the mesh."""
        return self.spec.targets([jax.make_array_from_process_local_data(sh, a, (self.spec.batch_size, *a.shape[1:]))
                                  for sh, a in zip(self.shardings, arrays)])

    def read(self, step: int) -> sparse.Targets:
        """Step `step`'s targets on the mesh, read and copied now (the read-ahead thread untouched)."""
        return self._place(self._files.numpy(step))

    def inputs(self, step: int) -> sparse.Targets:
        """Step `step`'s targets on the mesh: from the read-ahead thread (started at the first step asked for;
        steps are asked for in order), or read and copied now."""
        if self.prefetch <= 0:
            return self.read(step)
        if self._ahead is None:
            place = (lambda _step, _files, arrays: self._place(arrays)) if self.device_ahead else None
            self._ahead = Prefetcher(lambda _: self._files, step, self.spec.steps, self.prefetch, place)
        got = self._ahead.take(step, self._files)
        return got if self.device_ahead else self._place(got)

    def release(self) -> None:
        """Stops the read-ahead (the KD phase is over, or the run ends with the teacher held: rkd, a stop)."""
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None


def build_teacher_cache(config, store, tok, mesh, steps: int, previous: dict | None = None,
                        written: Callable[[int], None] = lambda step: None, source: TeacherSource | None = None,
                        aligner=None):
    """The sparse teacher targets of KD steps 0 .. `steps` - 1 (teacher_logits=cache; `steps`: the KD phase's
    scheduled end), built where missing: only then is the teacher restored (and released after). Returns
    (manifest, its directory, the teacher's checkpoint, Spec). `written(step)`: as in `build`; `source`: the
    teacher (default: config.salt.teacher resolved); `aligner` (salt_jax.data.alignment.Aligner): a teacher with
    another tokenizer, whose cache holds its chunk log-likelihoods of each step's aligned batch."""
    source = source or resolve(config.salt.teacher)
    identity = teacher_lib.identify(source)  # (from its files: a complete cache needs no restore)
    teacher_lib.check_same_teacher(config, identity, previous or {})
    spec = Spec.of(config, identity["fingerprint"], store.directory, steps, aligner)
    directory = spec.directory(store.directory)
    manifest = complete(directory, spec.steps)
    if manifest is None:
        online = teacher_lib.load_for_run(config, tok, mesh, previous or {}, source)
        batches = training_batches(store, config.data.batch_size, config.data.seed)
        if aligner is not None:
            batches = AlignedBatches(batches, aligner)
        manifest = build(online, batches, spec, directory, mesh, tok.pad_id, config.model.vocab_size, written)
        online.release()
    return manifest, directory, identity["checkpoint"], spec


def cached_teacher(config, store, tok, mesh, previous: dict, steps: int, workdir: str,
                   written: Callable[[int], None] = lambda step: None,
                   source: TeacherSource | None = None, aligner=None) -> CachedTeacher:
    """teacher_logits=cache: the run's CachedTeacher (its cache built first where missing; recorded in
    workdir/teacher_cache.json), its targets read ahead config.data.prefetch steps."""
    manifest, directory, checkpoint, spec = build_teacher_cache(config, store, tok, mesh, steps, previous, written,
                                                                source, aligner)
    if jax.process_index() == 0:
        paths.write_json(paths.join(workdir, "teacher_cache.json"), dict(manifest, directory=directory))
    return CachedTeacher(directory, manifest, spec, mesh, checkpoint, config.data.prefetch)
