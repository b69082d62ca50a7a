"""Config fields renamed since runs were saved, and how an old name is read.

A config.json saved before a rename is read under the new names (its run
resumes, the experiment's drift check and report read it), and an old
`--config.OLD=...` override on a command line still works (salt_jax.cli),
with a warning naming the new field. Both go through RENAMED, the one list.
"""

from __future__ import annotations

import copy

RENAMED = {  # old dotted name -> new
    "train.eval_every": "train.heldout_every",  # held-out loss, not few-shot scores (those are config.eval.*)
    "data.eval_batches": "data.heldout_batches",
}


def upgrade(saved: dict) -> dict:
    """A saved config (as config.json holds it) with each RENAMED field under its current name."""
    out = copy.deepcopy(saved)
    for old, new in RENAMED.items():
        (osec, ofield), (nsec, nfield) = old.split("."), new.split(".")
        if ofield in out.get(osec, {}):
            out.setdefault(nsec, {})[nfield] = out[osec].pop(ofield)
    return out


def override(arg: str) -> tuple[str, str | None]:
    """(the command-line argument with a renamed --config.OLD under its new name, the old name or None)."""
    for old, new in RENAMED.items():
        if arg == f"--config.{old}" or arg.startswith(f"--config.{old}="):
            return arg.replace(f"--config.{old}", f"--config.{new}", 1), old
    return arg, None
