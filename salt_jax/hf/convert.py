"""Converting weights: import a Hugging Face directory as a salt_jax checkpoint, export a run to one.

Import streams: one tensor is read at a time from its safetensors shard
(memory-mapped), transformed by its rule, written into its slot of the stacked
[layers, ...] host array of one parameter, and that parameter is placed
straight into its sharding before the next is read. Export walks the same
rules backwards and writes (sharded) safetensors with the family's config.json.
Imports salt_jax.model and salt_jax.data; never kd/ or train/, and never torch
or transformers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import ml_dtypes
import numpy as np
from flax import linen as nn
from jax.sharding import SingleDeviceSharding

from salt_jax.errors import UserError
from salt_jax.hf.families import family_of, hf_config_for, model_config_from_hf
from salt_jax import paths
from salt_jax.data import store, tokenizer
from salt_jax.hf import tokenizer as hf_tokenizer
from salt_jax.hf.files import SafetensorsReader, copy_tokenizer, fingerprint, read_hf_config, tokenizer_fingerprint
from salt_jax.hf.source import HF, TeacherSource
from salt_jax.model import checkpoints, sharding
from salt_jax.model.transformer import Transformer, abstract_params, dtype_of

# Buffers some checkpoints carry that are not parameters.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def _tree_get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _tree_set(tree: dict, path, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _abstract_params(cfg):
    """The boxed abstract parameters of a model config."""
    return abstract_params(Transformer(cfg))


def _place(host: np.ndarray, sharding):
    """A host array onto its sharding (each device reads only its slice; works on any host count)."""
    if sharding is None:
        return jax.device_put(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def load_params(hf_dir: str, cfg: ml_collections.ConfigDict | None = None, shardings=None) -> tuple[Any, Any]:
    """(model config, params) of an HF directory; params placed into `shardings` (a tree) or device 0.

    Streams: holds at most one stacked parameter (or one fused HF tensor's
    parts) on the host at a time.
    """


    hf = read_hf_config(hf_dir)
    cfg = cfg or model_config_from_hf(hf, os.path.join(hf_dir, "config.json"))
    family = family_of(hf)
    boxed = _abstract_params(cfg)
    abstract = nn.meta.unbox(boxed)
    dtype = np.dtype(dtype_of(cfg.param_dtype))
    reader = SafetensorsReader(hf_dir)
    prefix = {}
    if family.model_type == "gpt2":
        prefix = {"prefix": "transformer." if "transformer.wte.weight" in reader.names() else ""}
    params: dict = {}
    try:
        for rule in family.rules(cfg, **prefix):
            hosts = [np.empty(_tree_get(abstract, p).shape, dtype) for p in rule.salt]
            for i in range(cfg.n_layers if rule.layered else 1):
                parts = rule.to_salt(reader.get(rule.hf.format(i=i), rule.hf_shape))
                for host, part in zip(hosts, parts):
                    if rule.layered:
                        host[i] = part
                    else:
                        host[...] = part
            for path, host in zip(rule.salt, hosts):
                _tree_set(params, path, _place(host, None if shardings is None else _tree_get(shardings, path)))
            del hosts
        unused = sorted(n for n in reader.names() - reader.used
                        if not n.endswith(IGNORED_SUFFIXES) and not (cfg.tie_embeddings and n == "lm_head.weight"))
        if unused:
            raise UserError(f"{hf_dir}: tensor {unused[0]!r} (and {len(unused) - 1} more) is not used by the model "
                            "its config.json describes; an unsupported option may be set")
    finally:
        reader.close()
    missing = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract)
               if _try_get(params, p) is None]
    if missing:
        raise RuntimeError(f"hf import: no rule fills {missing[0]}")  # a bug in the rules, not a user error
    return cfg, params


def _try_get(tree, keypath):
    for k in keypath:
        if not isinstance(tree, dict) or k.key not in tree:
            return None
        tree = tree[k.key]
    return tree


def import_hf(hf_dir: str, out: str, mesh=None, dtype: str = "float32") -> str:
    """Writes `out`: a salt_jax teacher checkpoint (out/checkpoints/0) of an HF directory, + its tokenizer.

    The checkpoint has the layout and record of a teacher run's, so
    config.salt.teacher=out works unchanged; the tokenizer files go to
    out/hf_tokenizer and the record names them. Returns the checkpoint directory.
    """

    hf_dir = os.path.abspath(hf_dir)
    hf = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf, os.path.join(hf_dir, "config.json"))
    cfg.dtype = dtype
    if os.path.isdir(os.path.join(out, "checkpoints")):
        raise UserError(f"--out={out}: already holds checkpoints; choose a new directory")
    mesh = mesh or sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1}))
    boxed = _abstract_params(cfg)
    _, params = load_params(hf_dir, cfg, sharding.shardings_for(boxed, mesh))
    tok_files = copy_tokenizer(hf_dir, os.path.join(out, "hf_tokenizer"))
    tok_dir = os.path.join(out, "hf_tokenizer") if "tokenizer.json" in tok_files else None
    record = {"method": "hf_import", "step": 0, "model": cfg.to_dict(), "tokenizer": tokenizer_fingerprint(tok_dir),
              "hf": {"source": hf_dir, "model_type": hf["model_type"], "fingerprint": fingerprint(hf_dir),
                     "config": hf}, "hf_tokenizer": "hf_tokenizer" if tok_dir else ""}
    ckpt = checkpoints.Checkpointer(os.path.join(out, "checkpoints"), every=1, keep=1)
    ckpt.save(0, {"params": params}, record, force=True)
    ckpt.wait()
    ckpt.close()
    return os.path.join(out, "checkpoints", "0")


def teacher_hf_info(source: TeacherSource) -> tuple[str | None, int] | None:
    """(tokenizer directory or None, vocab_size) when the teacher `source` is HF-derived, else None.

    HF-derived: an HF model directory, or a checkpoint written by `import_hf`
    (its record names the copied tokenizer).
    """
    if source.kind == HF:
        hf = read_hf_config(source.path)
        cfg = model_config_from_hf(hf, os.path.join(source.path, "config.json"))
        return (source.path if os.path.isfile(os.path.join(source.path, "tokenizer.json")) else None), cfg.vocab_size
    record = checkpoints.read_record(source.root, source.step) or {}
    if not record.get("hf") and not record.get("hf_tokenizer"):
        return None
    tok = record.get("hf_tokenizer") or ""
    tok_dir = tok if os.path.isabs(tok) else paths.join(source.run_dir, tok) if tok else None
    return tok_dir, int(record["model"]["vocab_size"])


def _restore_params(root: str, step: int, cfg) -> Any:
    """The parameters of checkpoint root/step on one device (no optimizer state)."""
    dev = SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev),
                          nn.meta.unbox(_abstract_params(cfg)))
    return checkpoints.restore_params(root, step, target)


def _run_tokenizer(run_dir: str, record: dict):
    """The tokenizer the run trained with (its kept copy first), or None for an import that came without one."""
    try:
        with open(os.path.join(run_dir, "config.json")) as fh:
            run_config = json.load(fh)
    except (OSError, ValueError):
        run_config = {}
    cache = ((run_config.get("data") or {}).get("cache_dir") or "", store.default_cache_dir())
    return tokenizer.run_tokenizer(run_dir, record, run_config, [paths.expand(c) for c in cache if c])


def export_hf(workdir: str, out: str, step: int | None = None, dtype: str = "float32",
              shard_bytes: int = 4 << 30) -> str:
    """Writes the run's checkpoint (latest, or `step`) as an HF model directory; returns its family.

    config.json (the family that expresses the model config exactly),
    model.safetensors (sharded with an index above `shard_bytes`) and the
    run's tokenizer as AutoTokenizer reads it (salt_jax.hf.tokenizer: an HF
    tokenizer's files, or tokenizer.json built from SentencePiece or bytes);
    the tokenizer is found (or refused) before anything is written.
    """
    from safetensors.numpy import save_file  # the [hf] extra: imported only when exporting

    workdir = os.path.abspath(workdir)
    try:
        root, latest = checkpoints.resolve_checkpoint(workdir, "--workdir", role="run")
    except UserError as e:
        raise UserError(f"--workdir={workdir}: {str(e).split(': ', 1)[-1]}") from None
    if step is None:
        step = latest
    elif not os.path.isdir(os.path.join(root, str(step))):
        raise UserError(f"--step={step}: no such checkpoint in {root}; the latest is {latest}")
    record = checkpoints.read_record(root, step) or {}
    if "model" not in record:
        raise UserError(f"{os.path.join(root, str(step))}: no readable record with the model config; "
                        "is it a salt_jax checkpoint?")
    cfg = ml_collections.ConfigDict(record["model"])
    family, hf = hf_config_for(cfg, prefer=(record.get("hf") or {}).get("model_type"))
    tok = _run_tokenizer(os.path.dirname(root) if os.path.basename(root) == "checkpoints" else root, record)
    params = _restore_params(root, step, cfg)
    out_dtype = {"float32": np.float32, "bfloat16": "bfloat16", "float16": np.float16}[dtype]
    if out_dtype == "bfloat16":

        out_dtype = ml_dtypes.bfloat16
    os.makedirs(out, exist_ok=True)
    shards, current, size = [], {}, 0
    for rule in family.rules(cfg):
        leaves = [_tree_get(params, p) for p in rule.salt]
        for i in range(cfg.n_layers if rule.layered else 1):
            parts = [np.asarray(jax.device_get(x[i] if rule.layered else x)) for x in leaves]
            tensor = np.ascontiguousarray(rule.to_hf(*parts).astype(out_dtype))
            current[rule.hf.format(i=i)] = tensor
            size += tensor.nbytes
            if size >= shard_bytes:
                shards.append(current)
                _write_shard(save_file, out, current, len(shards))
                current, size = {}, 0
    if current or not shards:
        shards.append(current)
        _write_shard(save_file, out, current, len(shards))
    _finish_shards(out, shards)
    hf_record = (record.get("hf") or {}).get("config") or {}
    special = {k: hf_record[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf_record}
    if tok is not None:
        special = dict(hf_tokenizer.write(tok, out, int(cfg.max_len)), **special)
    hf = dict(hf, **special, dtype=dtype, torch_dtype=dtype)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(hf, fh, indent=2, sort_keys=True)
    return family.model_type


def _write_shard(save_file, out: str, tensors: dict, index: int) -> None:
    save_file(tensors, os.path.join(out, f"model-{index:05d}.safetensors"), metadata={"format": "pt"})


def _finish_shards(out: str, shards: list[dict]) -> None:
    """One shard -> model.safetensors; several -> model-0000i-of-0000n.safetensors + index."""
    n = len(shards)
    if n == 1:
        os.replace(os.path.join(out, "model-00001.safetensors"), os.path.join(out, "model.safetensors"))
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        os.replace(os.path.join(out, f"model-{i:05d}.safetensors"), os.path.join(out, name))
        weight_map.update({k: name for k in shard})
    total = sum(t.nbytes for s in shards for t in s.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
