"""The method table: every named method, what it runs, and the config.salt fields it sets.

A *method* is what config.salt.method names (baseline, teacher, rkd, salt,
salt_ds); a *variant* is a named row of this table (the `:ARG` of
configs/demo.py and the experiment's `methods` list): a method plus config.salt
overrides. Everything that asks "does this run use a teacher / select data /
have a KD phase that ends" asks this table, not a tuple of strings.
"""

from __future__ import annotations

import dataclasses
import types

from salt_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Method:
    """One row: a variant name, the config.salt.method it runs, and what that implies."""

    name: str  # the variant's name (configs/demo.py:NAME, experiment methods)
    method: str  # the config.salt.method it sets
    teacher: bool  # a frozen teacher runs inside the step while KD is on
    selects_data: bool  # the teacher picks the KD phase's sequences (SALT_DS)
    kd_ends: bool  # KD stops within the run (n_KD, the transition, or the adaptive switch)
    overrides: types.MappingProxyType  # config.salt fields the variant sets besides `method`
    summary: str  # one line for --help and the docs


def _row(name, method, teacher, selects_data, kd_ends, summary, **overrides) -> Method:
    return Method(name, method, teacher, selects_data, kd_ends, types.MappingProxyType(overrides), summary)


TABLE = (
    _row("baseline", "baseline", False, False, False, "next-token training only (w = 0)"),
    _row("teacher", "teacher", False, False, False, "a baseline run whose checkpoints serve as a teacher"),
    _row("rkd", "rkd", True, False, False, "KD with weight w0 for the whole run (the paper's reverse-KD strawman)"),
    _row("salt", "salt", True, False, True, "KD with weight w0 for the first n_KD steps, then next-token only"),
    _row("salt_ds", "salt_ds", True, True, True, "SALT whose KD phase trains on teacher-selected sequences"),
    _row("salt-linear", "salt", True, False, True, "SALT, w decays linearly to 0 after n_KD", transition="linear"),
    _row("salt-ratio", "salt", True, False, True, "SALT, the KD share of each batch decays after n_KD",
         transition="ratio"),
    _row("salt-adaptive", "salt", True, False, True, "SALT, KD ends when the student catches the teacher",
         switch="adaptive"),
    _row("salt-tokensel", "salt", True, False, True, "SALT, KD only where the target is in the teacher's top-k",
         token_select="topk"),
    _row("salt-wlinear", "salt", True, False, True, "SALT, w decays linearly from w0 at step 0 to 0 at n_KD",
         weight_schedule="linear"),
    _row("salt-wcosine", "salt", True, False, True, "SALT, w follows half a cosine from w0 at step 0 to 0 at n_KD",
         weight_schedule="cosine"),
    _row("salt-wlr", "salt", True, False, True, "SALT, w warms up and decays with the learning rate, 0 at n_KD",
         weight_schedule="with_lr"),
    _row("salt-cached", "salt", True, False, True, "SALT from cached top-k teacher logits (no teacher forward)",
         teacher_logits="cache"),
    _row("salt_ds-difference", "salt_ds", True, True, True, "SALT_DS, sequences ranked by teacher minus "
         "reference log-likelihood (MiniPLM)", ds_rule="difference"),
    _row("salt_ds-loss", "salt_ds", True, True, True, "SALT_DS, sequences ranked by the teacher's loss",
         ds_rule="loss"),
)
VARIANTS = {m.name: m for m in TABLE}
METHODS = {m.method: m for m in TABLE if m.name == m.method}  # config.salt.method -> its row


def variant(name: str) -> Method:
    """The table row of a variant name, or a UserError listing the names."""
    if name not in VARIANTS:
        raise UserError(f"config variant {name!r}: use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def method(name: str) -> Method:
    """The table row of a config.salt.method value (KeyError if unknown: validate the config first)."""
    return METHODS[name]
