"""config.validate: each field's allowed values are the owning module's one definition, --help lists them, and
validation leaves the config as it was. (In process, no data or model built: cheap.)"""

import ast
import inspect

import pytest

from salt_jax import config
from salt_jax.data import sources, tokenizer
from salt_jax.errors import UserError
from salt_jax.kd import losses, methods, objective, schedules, selection, sparse, teacher_cache
from salt_jax.kd import teacher
from salt_jax.model import attention, presets, sharding, transformer

# Field -> the object that defines its allowed values, in the module that gives them meaning (train/'s three
# live in config: config may not import train/).
OWNERS = {
    "model.norm": transformer.NORMS,
    "model.mlp": transformer.MLPS,
    "model.positions": transformer.POSITIONS,
    "model.activation": transformer.ACTIVATIONS,
    "model.dtype": transformer.DTYPES,
    "model.param_dtype": transformer.DTYPES,
    "model.remat": transformer.REMAT_POLICIES,
    "model.attention": attention.IMPLEMENTATIONS,
    "data.source": sources.SOURCES,
    "data.tokenizer.kind": tokenizer.KINDS,
    "optim.schedule": config.LR_SCHEDULES,
    "salt.method": methods.METHODS,
    "salt.teacher_sharding": sharding.PARAM_LAYOUTS,
    "salt.transition": schedules.TRANSITIONS,
    "salt.switch": schedules.SWITCHES,
    "salt.kd_loss": losses.KD_LOSSES,
    "salt.weight_schedule": schedules.SCHEDULES,
    "salt.temperature_schedule": schedules.TEMPERATURE_SCHEDULES,
    "salt.teacher_logits": teacher_cache.TEACHER_LOGITS,
    "salt.teacher_tokenizer": teacher.TOKENIZER_CHOICES,
    "salt.cache_targets": sparse.KINDS,
    "salt.cache_dtype": teacher_cache.CACHE_DTYPES,
    "salt.ds_rule": selection.RULES,
    "salt.token_select": losses.TOKEN_SELECTIONS,
    "salt.teacher_preset": presets.PRESETS,
    "salt.teacher_dtype": transformer.DTYPES,
    "train.loss": objective.LOSSES,
    "train.nan_policy": config.NAN_POLICIES,
    "logging.wandb_mode": config.WANDB_MODES,
}


def _set(c, name, value):
    *sections, field = name.split(".")
    for s in sections:
        c = c[s]
    c[field] = value


def test_every_allowed_values_list_is_the_owning_modules_object():
    assert set(config.CHOICES) == set(OWNERS)
    assert [n for n in OWNERS if config.CHOICES[n] is not OWNERS[n]] == []


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_validate_checks_the_field_against_its_owners_values(name):
    c = config.base_config()
    _set(c, name, "no-such-value")
    with pytest.raises(UserError, match=rf"^config\.{name}='no-such-value': (unknown source; )?use "):
        config.validate(c)


SECTIONS = ("validate", "_choice", "_model", "_data", "_optim", "_mesh", "_salt", "_teacher_fields",
            "_selection_fields", "_phase_fields", "_train", "_eval", "_logging")


def test_validate_holds_no_lists_of_allowed_values_of_its_own():
    """No literal tuple, list or set of allowed values (two or more) in validate's functions."""
    values = {v for owner in OWNERS.values() for v in owner} | set(transformer.LAYER_LETTERS)
    found = []
    for name in SECTIONS:
        for node in ast.walk(ast.parse(inspect.getsource(getattr(config, name)))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                    isinstance(e, ast.Constant) and e.value in values for e in node.elts):
                found.append((name, [e.value for e in node.elts]))
    assert found == []


def test_help_lists_each_fields_allowed_values_from_its_owner():
    text = config.run_help("doc", [])
    for name, owner in OWNERS.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"  {name} = "))
        shown = (["''"] if name in config.CAN_BE_EMPTY else []) + list(owner)
        assert line.endswith("[" + " | ".join(shown) + "]"), line


def test_validate_leaves_the_config_unchanged():
    for variant in ("baseline", "salt", "salt-cached", "salt_ds"):
        c = config.set_method(config.base_config(), variant)
        c.salt.teacher = "runs/t"
        c.data.mixture = "a:1=x.jsonl,b:1=y.jsonl"
        before = c.to_dict()
        config.validate(c)
        assert c.to_dict() == before, variant
