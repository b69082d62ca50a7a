"""Reading and describing a Hugging Face model directory: config.json, safetensors, tokenizer files.

`is_hf_dir` / `read_hf_config` find and parse the directory, `SafetensorsReader`
reads its tensors one at a time (memory-mapped; bf16 through ml_dtypes),
`fingerprint` identifies its weights and `tokenizer_fingerprint` its tokenizer.
Imports salt_jax.data (the tokenizer) only; safetensors is imported where used
(the [hf] extra).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
from typing import Any

import numpy as np

from salt_jax.data.tokenizer import HFTokenizer
from salt_jax.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def is_hf_dir(path: str) -> bool:
    """Whether `path` looks like a Hugging Face model directory (config.json + *.safetensors)."""
    return (os.path.isfile(os.path.join(path, "config.json"))
            and bool(glob.glob(os.path.join(path, "*.safetensors"))))


def read_hf_config(hf_dir: str) -> dict:
    """The parsed config.json of `hf_dir`, or a clear error."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise UserError(f"{hf_dir}: no such directory; give a local Hugging Face model directory")
    try:
        with open(path) as fh:
            return json.load(fh)
    except OSError:
        raise UserError(f"{path}: missing; a Hugging Face model directory has config.json and "
                        "*.safetensors (save_pretrained writes both)") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


class SafetensorsReader:
    """Tensors by name from a directory's safetensors files (one shard or an index), read one at a time."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
        if not files:
            raise UserError(f"{hf_dir}: no *.safetensors files; save the model with save_pretrained "
                            "(safe_serialization, the default) or convert its .bin weights to safetensors")
        self._stack = contextlib.ExitStack()
        self.where: dict[str, Any] = {}
        for path in files:
            try:
                handle = self._stack.enter_context(safe_open(path, framework="numpy"))
            except Exception as e:  # safetensors raises its own error types on corrupt files
                self.close()
                raise UserError(f"{path}: not a readable safetensors file ({e})") from None
            for name in handle.keys():
                self.where[name] = (handle, path)
        self.used: set[str] = set()

    def names(self) -> set[str]:
        return set(self.where)

    def get(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        """Tensor `name` as a host array, checked against the shape the config implies."""
        if name not in self.where:
            raise UserError(f"tensor {name!r} is missing from the safetensors files; the checkpoint does not "
                            "match its config.json")
        handle, path = self.where[name]
        array = handle.get_tensor(name)
        if tuple(array.shape) != tuple(expected_shape):
            raise UserError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, the config implies "
                            f"{tuple(expected_shape)}; the weights do not match config.json")
        self.used.add(name)
        return array

    def close(self) -> None:
        self._stack.close()


def fingerprint(hf_dir: str) -> str:
    """A short hash of an HF directory's config and weight files (names, sizes, headers)."""
    h = hashlib.sha256()
    with open(os.path.join(hf_dir, "config.json"), "rb") as fh:
        h.update(fh.read())
    for path in sorted(glob.glob(os.path.join(hf_dir, "*.safetensors"))):
        h.update(f"{os.path.basename(path)}:{os.path.getsize(path)}\n".encode())
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(n, 1 << 24)))
    return "hf-" + h.hexdigest()[:16]


def tokenizer_fingerprint(tok_dir: str | None) -> str:
    if not tok_dir or not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        return ""

    return HFTokenizer(tok_dir).fingerprint()


def copy_tokenizer(src: str, dst: str) -> list[str]:
    """Copies the tokenizer files present in `src` into `dst`; returns their names."""
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    if names:
        os.makedirs(dst, exist_ok=True)
        for n in names:
            shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
    return names


def special_ids(tok_dir: str) -> dict:
    tok = HFTokenizer(tok_dir)
    out = {"eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    if tok.bos_id is not None:
        out["bos_token_id"] = tok.bos_id
    return out
