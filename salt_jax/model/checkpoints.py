"""Orbax checkpoints of the train state, plus a small JSON record per step.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-save never leaves a step that `latest_step` picks up (leftover
temporary directories are cleaned up on the next start). A checkpoint that is
complete on disk but cannot be read (a truncated or corrupted file) is set
aside as `unreadable-<step>` when an earlier one exists, and the run resumes
from that one, saying so; when there is none, the error names it. The state
is restored straight into the target shardings (any mesh / host count).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from salt_jax import paths
from salt_jax.errors import UserError


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _disk_errno(e: BaseException) -> int | None:
    """The errno of a full, read-only or over-quota disk behind `e`, else None. Orbax wraps the OSError in
    its own types; tensorstore reports it as a ValueError ("RESOURCE_EXHAUSTED: ... [os_error_code='28']")."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return e.errno
        found = re.search(r"os_error_code='(\d+)'", str(e))
        if found and int(found.group(1)) in _DISK_ERRNOS:
            return int(found.group(1))
        e = e.__cause__ or e.__context__
    return None


class UnreadableCheckpoint(UserError):
    """A checkpoint directory whose files cannot be read back (torn, truncated or corrupted)."""


def read_record(directory: str, step: int) -> dict | None:
    """The JSON record saved beside the state of checkpoint `directory/step` (None if missing or torn)."""
    try:
        with paths.open(paths.join(directory, str(step), "record", "metadata")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def restore_params(root: str, step: int, target: Any, what: str = "checkpoint") -> Any:
    """Only the parameters of checkpoint root/step (no optimizer state), placed and cast as `target`
    (a tree of ShapeDtypeStructs with shardings) says; a UserError naming the checkpoint if unreadable."""
    manager = ocp.CheckpointManager(root, item_names=("state", "record"),
                                    options=ocp.CheckpointManagerOptions(create=False))
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args=jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype),
                                      {"params": target}),
            partial_restore=True)))
    except Exception as e:  # orbax raises many types for unreadable / mismatched files
        raise UserError(f"{paths.join(root, str(step))}: {what} cannot be restored ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from None
    finally:
        manager.close()
    return restored["state"]["params"]


def resolve_checkpoint(path: str, field: str = "config.salt.teacher", role: str = "teacher") -> tuple[str, int]:
    """(checkpoints directory, step) for a run's workdir or a single checkpoint directory; errors name
    `field`, the setting that gave the path, and say what was expected there: a `role="teacher"` (a
    student's config.salt.teacher) or any training run's checkpoint (`role="run"`: eval, sample, export)."""
    path = paths.expand(path)
    teacher = role == "teacher"
    if not paths.isdir(path):
        raise UserError(f"{field}={path}: no such directory; give the "
                        f"{'teacher run' if teacher else 'training run'}'s workdir or one of its checkpoint "
                        "directories")
    if paths.exists(paths.join(path, "_CHECKPOINT_METADATA")) or paths.isdir(paths.join(path, "state")):
        base, step = path.rstrip("/").rsplit("/", 1)
        if step.isdigit():
            return base, int(step)
    root = paths.join(path, "checkpoints") if paths.isdir(paths.join(path, "checkpoints")) else path
    steps = sorted(int(d) for d in paths.listdir(root)
                   if d.isdigit() and paths.exists(paths.join(root, d, "_CHECKPOINT_METADATA")))
    if not steps:
        if teacher:
            raise UserError(f"{field}={path}: no finished checkpoint in it; train the teacher first "
                            "(python -m salt_jax.main --config=FILE:teacher --workdir=DIR) and point at DIR")
        raise UserError(f"{field}={path}: no finished checkpoint in it (expected a training run's workdir, with "
                        "checkpoints/<step>/, or one checkpoint directory); train a run there first or point at "
                        "one")
    return root, steps[-1]


class Checkpointer:
    """Saves every `every` steps, keeps the last `keep`, restores the latest."""

    def __init__(self, directory: str, every: int, keep: int):
        self.directory, self.every, self.keep = paths.expand(directory), max(every, 1), keep
        self.manager = self._manager()

    def _manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True, cleanup_tmp_directories=True),
            item_names=("state", "record"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, record: dict, force: bool = False) -> bool:
        """Saves (asynchronously) if `step` is on the interval or `force`; returns whether it did."""
        if not force and step % self.every:
            return False
        self._check_space(step, state)
        with self._disk_errors(step):
            return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                   record=ocp.args.JsonSave(record)), force=True)

    def _check_space(self, step: int, state: Any) -> None:
        """Refuses a save the local disk cannot hold, before Orbax starts writing: a write that fails part
        way is reported by Orbax's threads with pages of tracebacks. A checkpoint is written to a temporary
        directory and its files are then merged, so about twice the state's bytes are needed at once."""
        if paths.is_remote(self.directory):
            return
        need = 2 * sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
        where = self.directory
        while not os.path.exists(where) and os.path.dirname(where) != where:
            where = os.path.dirname(where)
        free = shutil.disk_usage(where).free
        if free < need:
            raise UserError(f"{self.directory}: cannot write checkpoint {step} (No space left on device: it needs "
                            f"about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free); free space or fix the "
                            f"disk and re-run the same command: {self._resume_note()}")

    def _resume_note(self) -> str:
        last = self.latest_step()
        return f"it resumes from checkpoint {last}" if last is not None else "no checkpoint was written yet"

    @contextlib.contextmanager
    def _disk_errors(self, step: int | None):
        """A full, read-only or over-quota disk while saving is one line (the earlier checkpoints are intact:
        a step is renamed into place only when complete)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 -- orbax wraps the OSError in its own types
            code = _disk_errno(e)
            if code is None:
                raise
            if step is not None:  # let the earlier, complete saves still in flight finish
                try:
                    self.manager.wait_until_finished()
                except Exception:  # noqa: BLE001 -- the disk error is the one to report
                    pass
            text, x = [], e
            while x is not None:
                text, x = text + [str(x)], x.__cause__ or x.__context__
            failed = re.search(r"/(\d+)\.orbax-checkpoint-tmp", " ".join(text))  # (an earlier save, in the background)
            step = int(failed.group(1)) if failed else step
            which = f"checkpoint {step}" if step is not None else "a checkpoint"
            raise UserError(f"{self.directory}: cannot write {which} ({os.strerror(code)}); free space or "
                            f"fix the disk and re-run the same command: {self._resume_note()}") from None

    def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict]:
        """(state placed in `shardings`, record) of checkpoint `step`."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, shardings)
        path = paths.join(self.directory, str(step))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                     record=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable / mismatched files
            raise UnreadableCheckpoint(f"{path}: checkpoint cannot be restored ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); remove it to resume from an earlier step, "
                            "or use a fresh --workdir") from None
        logging.info("restored checkpoint %s", path)
        return out["state"], out["record"]

    def restore_latest(self, abstract_state: Any, shardings: Any, check_record=None) -> tuple[int | None, Any, dict]:
        """(step, state, record) of the newest readable checkpoint, or (None, None, {}) when there is none.

        `check_record(record)` may raise a UserError (e.g. a different model):
        that is the user's to fix, never a reason to fall back. An unreadable
        checkpoint with an earlier one behind it is set aside and the earlier
        one is used; the newest checkpoint being unreadable with nothing behind
        it is a UserError naming it.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            record = read_record(self.directory, step)
            try:
                if record is None:
                    raise UnreadableCheckpoint(f"{paths.join(self.directory, str(step))}: checkpoint record is "
                                               "missing or unreadable; remove the directory to resume from an "
                                               "earlier step, or use a fresh --workdir")
                if check_record is not None:
                    check_record(record)
                state, _ = self.restore(step, abstract_state, shardings)
                return step, state, record
            except UnreadableCheckpoint as e:
                if i + 1 == len(steps):
                    raise
                self._set_aside(step, steps[i + 1], str(e))
        return None, None, {}

    def _set_aside(self, step: int, fallback: int, why: str) -> None:
        """Renames an unreadable checkpoint out of Orbax's sight (nothing is deleted)."""
        src = paths.join(self.directory, str(step))
        dst = paths.join(self.directory, f"unreadable-{step}")
        if jax.process_index() == 0:
            n = 1
            while paths.exists(dst):
                dst, n = paths.join(self.directory, f"unreadable-{step}.{n}"), n + 1
            paths.rename(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set_aside_{step}")
        logging.warning("checkpoint %s is unreadable (%s); moved it to %s and resuming from step %d instead",
                        src, why, dst, fallback)
        self.manager.close()
        self.manager = self._manager()

    def wait(self) -> None:
        with self._disk_errors(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
