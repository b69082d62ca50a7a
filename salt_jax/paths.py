"""Paths: local files and cloud object stores (gs://, s3://) behind one small set of functions.

Everything salt_jax reads and writes besides checkpoint arrays (Orbax does
those) goes through here: the raw text/JSONL, the tokenizer and token-store
caches, and the workdir's JSON files. A local path uses `os` directly (and the
token store memory-maps its shards). A path with a URI scheme goes through
etils.epath, the layer Orbax already uses: gs:// by tf.io.gfile (installed with
salt_jax; it is imported only when such a path is used), s3:// and the rest by
fsspec (`pip install s3fs` and set EPATH_USE_TF=false, which also moves gs://
to gcsfs).

Object stores have no atomic rename and no file locks, but a single object
appears whole when its writer closes it. So `write_atomic` writes a local file
beside its target and renames it, and writes an object directly; callers that
need a commit point write one small marker file last (the token store's
meta.json).

A store that cannot be reached (no credentials, no network) is a UserError naming the path and what to
do (`reaching`), not a page of traceback, from every function here that touches a URI (reads from a file
already open are not covered).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import glob as glob_lib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from typing import IO, Callable, Iterator

import numpy as np

from salt_jax.errors import UserError

_GLOB_CHARS = "*?["


def is_remote(path: str) -> bool:
    """True for a URI (gs://bucket/x, s3://...): read and written through etils.epath."""
    return "://" in str(path)


def _epath(path: str):
    _import_tensorflow_quietly()
    from etils import epath  # noqa: PLC0415 -- pulls tf.io.gfile only when a remote path is used
    return epath.Path(path)


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow, which etils.epath uses for URIs unless EPATH_USE_TF=false, with file descriptor 2
    pointed at /dev/null: its C++ start-up lines (oneDNN, "Could not find cuda drivers", "failed call to
    cuInit", twice) are logged before absl::InitializeLog, where TF_CPP_MIN_LOG_LEVEL does not reach.
    An import that fails still raises its ImportError."""
    if "tensorflow" in sys.modules or os.environ.get("EPATH_USE_TF", "").lower() in ("false", "no", "f", "0"):
        return
    if importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        import tensorflow  # noqa: F401, PLC0415
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


# What to do when an object store cannot be reached, by URI scheme.
_STORES = {
    "gs": ("Google Cloud Storage", "run `gcloud auth application-default login` (or set "
           "GOOGLE_APPLICATION_CREDENTIALS) and check the network, or use a local path"),
    "s3": ("Amazon S3", "set AWS credentials (`aws configure`) and check the network, or use a local path"),
}
# Words of the errors tf.io.gfile, gcsfs, google-auth and botocore raise for no network or no credentials.
_UNREACHABLE = re.compile(
    r"could not resolve|couldn't resolve|couldn't connect|could not connect|libcurl|credential|authenticat|"
    r"anonymous caller|unauthori[sz]ed|\b40[13]\b|permission denied|access denied|forbidden|timed out|timeout|"
    r"connection refused|connection reset|network is unreachable|name or service not known|"
    r"temporary failure in name resolution", re.IGNORECASE)
_REMOTE_LIBRARIES = ("tensorflow", "google", "gcsfs", "aiohttp", "botocore", "s3fs", "requests", "urllib3", "fsspec")


def unreachable(e: BaseException) -> str | None:
    """Why an object store could not be reached, when `e` (or what caused it) says that there is no
    network or no credentials; None for anything else (a missing object, a bug)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = " ".join(str(e).split())
        remote = type(e).__module__.split(".")[0] in _REMOTE_LIBRARIES
        if (isinstance(e, (ConnectionError, TimeoutError)) or "Credentials" in type(e).__name__
                or (remote and _UNREACHABLE.search(text))):
            return (text or type(e).__name__)[:240]
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def reaching(path: str) -> Iterator[None]:
    """Turns "no network / no credentials" errors of a remote `path` into one UserError saying what to do."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 -- only the unreachable-store errors are turned into UserError
        scheme = str(path).split("://", 1)[0]
        if is_remote(path) and "File system scheme" in str(e) and type(e).__name__ == "UnimplementedError":
            raise UserError(f"{path}: tf.io.gfile cannot open {scheme}:// paths; pip install the scheme's fsspec "
                            "package (s3fs for s3://) and set EPATH_USE_TF=false") from None
        why = unreachable(e) if is_remote(path) else None
        if why is None:
            raise
        store, todo = _STORES.get(scheme, (f"{scheme}://", "check the network and credentials, or use a local path"))
        raise UserError(f"{path}: cannot reach {store} (no credentials or network: {why}); {todo}") from None


def _remote(fn):
    """`fn(path, ...)` with reaching(path) around it."""
    @functools.wraps(fn)
    def wrapped(path, *args, **kwargs):
        if not is_remote(path):
            return fn(path, *args, **kwargs)
        with reaching(path):
            return fn(path, *args, **kwargs)
    return wrapped


def join(path: str, *parts: str) -> str:
    """`os.path.join` that keeps a URI's scheme (gs://b/x + y = gs://b/x/y)."""
    return os.path.join(path, *parts)


def expand(path: str) -> str:
    """`~` expanded and made absolute for a local path; a URI unchanged."""
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


@_remote
def exists(path: str) -> bool:
    return _epath(path).exists() if is_remote(path) else os.path.exists(path)


@_remote
def isdir(path: str) -> bool:
    return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return (exists(path) and not isdir(path)) if is_remote(path) else os.path.isfile(path)


@_remote
def getsize(path: str) -> int:
    return int(_epath(path).stat().length) if is_remote(path) else os.path.getsize(path)


@_remote
def listdir(path: str) -> list[str]:
    """Names of a directory's entries, sorted."""
    return sorted(p.name for p in _epath(path).iterdir()) if is_remote(path) else sorted(os.listdir(path))


@_remote
def makedirs(path: str) -> None:
    if is_remote(path):
        _epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


@_remote
def remove(path: str) -> None:
    _epath(path).unlink() if is_remote(path) else os.remove(path)


@_remote
def rename(src: str, dst: str) -> None:
    """Moves a file or directory (atomic locally; a copy and delete on most object stores)."""
    _epath(src).rename(dst) if is_remote(src) else os.replace(src, dst)


@_remote
def rmtree(path: str) -> None:
    """Deletes a directory tree; a missing one is not an error."""
    if is_remote(path):
        if _epath(path).exists():
            _epath(path).rmtree()
    else:
        shutil.rmtree(path, ignore_errors=True)


@_remote
def open(path: str, mode: str = "r") -> IO:  # noqa: A001 -- the builtin's name, for the builtin's job
    return _epath(path).open(mode) if is_remote(path) else builtins.open(path, mode)


@_remote
def walk_files(root: str, hidden: bool = False) -> list[str]:
    """Every file under `root`, recursively, sorted; hidden files and directories (.name) are skipped
    unless `hidden`."""
    keep = lambda name: hidden or not name.startswith(".")  # noqa: E731
    walk = _epath(root).walk() if is_remote(root) else os.walk(root)
    found = []
    for directory, dirs, files in walk:
        dirs[:] = [d for d in dirs if keep(d)]  # pruned where the backend allows it
        rel = str(directory)[len(root.rstrip("/")):].strip("/")
        if rel and not all(keep(part) for part in rel.split("/")):
            continue
        found.extend(join(str(directory), f) for f in files if keep(f))
    return sorted(found)


@_remote
def glob(pattern: str) -> list[str]:
    """Paths matching a glob pattern, sorted. `**` (any depth) works for local paths; in a URI
    name a directory instead, which is read recursively."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(os.path.expanduser(pattern), recursive=True))
    if not any(c in pattern for c in _GLOB_CHARS):
        return [pattern] if exists(pattern) else []
    if "**" in pattern:
        raise ValueError(f"{pattern}: '**' is not supported in a URI; name the directory, which is read "
                         "recursively")
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    fixed = next(i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS))
    base = f"{scheme}://" + "/".join(parts[:fixed])
    return sorted(str(p) for p in _epath(base).glob("/".join(parts[fixed:])))


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes a whole file so that a reader sees the old one or the new one, never a torn one."""
    with writer(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)


@_remote
def read_json(path: str):
    with open(path) as fh:
        return json.load(fh)


def write_json(path: str, obj, indent: int | None = 1) -> None:
    write_atomic(path, json.dumps(obj, indent=indent))


@contextlib.contextmanager
def writer(path: str, mode: str = "wb") -> Iterator[IO]:
    """A file opened for writing that appears at `path` only when the block ends without error."""
    if is_remote(path):
        with reaching(path):
            fh = _epath(path).open(mode)
        try:
            yield fh
        finally:
            with reaching(path):  # (closing uploads the object)
                fh.close()
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with builtins.open(tmp, mode) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def wait_for(ready: Callable[[], bool], what: str, poll_s: float = 2.0, report_s: float = 60.0) -> None:
    """Polls `ready()` (another host's file appearing) until it is true, logging every `report_s` seconds."""
    t0 = last = time.time()
    while not ready():
        if time.time() - last >= report_s:
            last = time.time()
            logging.info("waiting for %s (%.0fs)", what, last - t0)
        time.sleep(poll_s)


class ArrayFile:
    """A flat little-endian array in one file, read by element range: memory-mapped when local, by
    ranged reads (one open handle per thread) when remote."""

    def __init__(self, path: str, dtype: np.dtype, length: int):
        self.path, self.dtype, self.length = path, np.dtype(dtype), length
        self._map = None
        if not is_remote(path) and length:
            self._map = np.memmap(path, self.dtype, mode="r", shape=(length,))
        self._local = threading.local()

    def __getitem__(self, s: slice) -> np.ndarray:
        start, stop, _ = s.indices(self.length)
        if self._map is not None or stop <= start:
            return self._map[start:stop] if self._map is not None else np.zeros((0,), self.dtype)
        fh = getattr(self._local, "fh", None)
        if fh is None:
            fh = self._local.fh = _epath(self.path).open("rb")
        size = self.dtype.itemsize
        fh.seek(start * size)
        return np.frombuffer(fh.read((stop - start) * size), self.dtype)
