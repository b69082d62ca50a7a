"""The run directory: checked before anything is built, locked while a run uses it, and its config.json.

A workdir holds one run. `Workdir.open` refuses, in one line each, a path that
is a file or sits under one, a directory this process cannot write, entries of
the wrong kind where the run keeps its files, and a workdir another salt_jax
process is using: process 0 holds an exclusive lock (`.lock`, flock) for the
whole run, which the OS drops when the process ends, so a lock left by a
killed run is never stale. On resume, config.json says what the run was
trained with: a change to any field that alters what the run computes is
refused with the fields named; where things live, logging, evaluation,
checkpoint intervals and the mesh may change (config.RESUMABLE_CHANGES).
gs:// and s3:// workdirs get the same checks except the lock (object stores
have none): run one process 0 per workdir there.

A run refused before its first step leaves nothing behind (`discard`): a
workdir the command created is removed (with the parent directories it
created), and in one that existed only the entries the command added go;
nothing that was there before is touched (local workdirs, process 0).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time

import jax
import ml_collections

from salt_jax import paths
from salt_jax.config import RESUMABLE_CHANGES, drift
from salt_jax.errors import UserError

# What a run keeps in its workdir, and the kind of entry each must be.
_ENTRIES = {"checkpoints": "directory", "tensorboard": "directory", "metrics.jsonl": "file", "config.json": "file",
            "summary.json": "file", "wandb": "directory", "wandb_run_id": "file", "tokenizer": "directory"}


class Workdir:
    """A run's directory, locked by process 0 from `open` to `close`."""

    def __init__(self, path: str):
        self.path = paths.expand(path)
        self._lock = None
        self._created: list[str] = []  # the directories open() created, innermost first
        self._found: set[str] | None = None  # the entries of a workdir that existed, as open() found them

    def open(self) -> "Workdir":
        _check_kind(self.path)
        if paths.is_remote(self.path):
            paths.makedirs(self.path)
            return self
        self._created = _missing(self.path)
        self._found = None if self._created else set(os.listdir(self.path))
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise UserError(f"--workdir={self.path}: cannot create it ({e.strerror}); choose a writable "
                            "directory") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            read_only = bool(os.statvfs(self.path).f_flag & os.ST_RDONLY)
            why = "on a read-only filesystem; remount it writable" if read_only else \
                "by this user; fix its permissions"
            raise UserError(f"--workdir={self.path}: not writable {why} or choose another --workdir "
                            "(its checkpoints are kept)")
        for name, kind in _ENTRIES.items():
            entry = os.path.join(self.path, name)
            if os.path.lexists(entry) and (os.path.isdir(entry) != (kind == "directory")):
                raise UserError(f"{entry}: should be a {kind}; move it away (it is not salt_jax's)")
        if jax.process_index() == 0:
            self._take_lock()
        return self

    def _take_lock(self) -> None:
        path = os.path.join(self.path, ".lock")
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # a file system without locks
                logging.warning("%s: cannot lock the workdir (%s); make sure no other run uses it", path,
                                e.strerror)
                fh.close()
                return
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UserError(f"--workdir={self.path}: in use by {holder}; wait for that run to end, or use "
                            "another --workdir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"salt_jax pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        self._lock = fh

    def discard(self) -> None:
        """Removes what this command put here (a refused run): the workdir and the parents open() created, or,
        in a workdir that existed, the entries added since open(); never what was there before."""
        if jax.process_index() != 0 or paths.is_remote(self.path) or (not self._created and self._found is None):
            return
        if self._created:
            shutil.rmtree(self.path, ignore_errors=True)
            for directory in self._created[1:]:  # (parents: only while empty)
                try:
                    os.rmdir(directory)
                except OSError:
                    break
        else:
            for name in sorted(set(os.listdir(self.path)) - self._found):
                entry = os.path.join(self.path, name)
                if os.path.isdir(entry) and not os.path.islink(entry):
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    os.remove(entry)
        logging.info("%s: the refused run's files removed (%s)", self.path,
                     "the workdir it created" if self._created else "nothing that was there before")

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # the lock goes with the descriptor
            self._lock = None

    def __enter__(self) -> "Workdir":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def _missing(path: str) -> list[str]:
    """The directories os.makedirs(path) would create, innermost first."""
    out = []
    while path and not os.path.lexists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def _check_kind(path: str) -> None:
    """A workdir that is a file, or under a file, is one clear line."""
    if paths.is_remote(path):
        if paths.isfile(path):
            raise UserError(f"--workdir={path}: is a file; give a directory")
        return
    probe = path
    while probe and not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        what = "is a file" if probe == path else f"is under {probe}, which is a file"
        raise UserError(f"--workdir={path}: {what}; give a directory")


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume the run in `workdir` with a config that changes what it computes."""
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        return
    try:
        saved = paths.read_json(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__}); restore it, or use a fresh --workdir") from None
    found = drift(saved, config, RESUMABLE_CHANGES)
    if found:
        more = f" and {len(found) - 8} more" if len(found) > 8 else ""
        raise UserError(f"{path}: this workdir holds a run trained with another config: {', '.join(found[:8])}"
                        f"{more}; resume with its config, or use a fresh --workdir")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """config.json: the run's config, as resumed (check_config has refused what may not change)."""
    path = paths.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if paths.exists(path):
        with paths.open(path) as fh:
            old = fh.read()
        if old == text:
            return
        changed = drift(json.loads(old), config, ())
        logging.info("%s: resumed with %s; the previous file is kept as config.prev.json", path,
                     ", ".join(changed) if changed else "the same settings")
        paths.write_atomic(paths.join(workdir, "config.prev.json"), old)
    paths.write_atomic(path, text)
