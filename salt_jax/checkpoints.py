"""Orbax checkpoints of the train state, plus a small JSON record per step.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-save never leaves a step that `latest_step` picks up. The state
is restored straight into the target shardings (any mesh / host count).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from salt_jax.errors import UserError


def read_record(directory: str, step: int) -> dict | None:
    """The JSON record saved beside the state of checkpoint `directory/step` (None if missing or torn)."""
    try:
        with open(os.path.join(directory, str(step), "record", "metadata")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


class Checkpointer:
    """Saves every `every` steps, keeps the last `keep`, restores the latest."""

    def __init__(self, directory: str, every: int, keep: int):
        self.directory, self.every = os.path.abspath(directory), max(every, 1)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "record"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, record: dict, force: bool = False) -> bool:
        """Saves (asynchronously) if `step` is on the interval or `force`; returns whether it did."""
        if not force and step % self.every:
            return False
        return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                               record=ocp.args.JsonSave(record)), force=True)

    def record(self, step: int) -> dict:
        """The JSON record saved with checkpoint `step` ({} if unreadable)."""
        return read_record(self.directory, step) or {}

    def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict]:
        """(state placed in `shardings`, record) of checkpoint `step`."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, shardings)
        path = os.path.join(self.directory, str(step))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                     record=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable / mismatched files
            raise UserError(f"{path}: checkpoint cannot be restored ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); remove it to resume from an earlier step, "
                            "or use a fresh --workdir") from None
        logging.info("restored checkpoint %s", path)
        return out["state"], out["record"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
