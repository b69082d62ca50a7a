"""Tokenizers: a byte-level one, a SentencePiece model trained on the train split, a Hugging Face one.

The first two share the special ids pad=0, eos=1, bos=2 (HFTokenizer reads its own). The SentencePiece model is
trained once per (source fingerprint, settings) and cached as a .model file;
it keeps whitespace and newlines (source code), with byte fallback so every
string round-trips.

A run keeps the tokenizer it trained with in `<workdir>/tokenizer/` (`keep`):
the SentencePiece model as tokenizer.model, a Hugging Face tokenizer's files
(bytes need none), so sampling, evaluation and export read that copy
(`run_tokenizer`) wherever the token cache or the teacher directory went.
`described` says a config's tokenizer (fingerprint, vocabulary size) without
training anything, for the checks made before a store is built.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
import random
import tempfile
from typing import Iterable, Protocol

import ml_collections
import numpy as np

from salt_jax import paths
from salt_jax.errors import UserError, listed

PAD_ID, EOS_ID, BOS_ID = 0, 1, 2


class Tokenizer(Protocol):
    """What the token store, the student and its teacher need of a tokenizer.

    `encode` maps a batch of documents to id lists (no EOS: the store appends
    `eos_id` after each document); `pad_id` marks padding, which the loss masks;
    `vocab_size` bounds the ids (the model's vocab_size may be larger);
    `fingerprint` identifies the vocabulary, keys the token store and must
    match between a student and its teacher.
    """

    vocab_size: int  # ids are in [0, vocab_size)
    pad_id: int  # padding id (masked in every loss)
    eos_id: int  # appended after every document in the token store

    def encode(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def fingerprint(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted by 3 (ids 0-2 are pad/eos/bos): vocabulary of 259."""

    vocab_size, pad_id, eos_id, bos_id, offset = 259, PAD_ID, EOS_ID, BOS_ID, 3

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [(np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + self.offset).tolist()
                for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i - self.offset for i in ids if i >= self.offset)
        return data.decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "bytes-v1"


class SentencePieceTokenizer:
    """A SentencePiece model file (ours or seqio's: same special-id convention)."""

    def __init__(self, model_file: str):
        import sentencepiece as spm

        try:
            with paths.open(model_file, "rb") as fh:
                proto = fh.read()
            self.sp = spm.SentencePieceProcessor(model_proto=proto)
        except (OSError, RuntimeError) as e:
            raise UserError(f"{model_file}: not a readable SentencePiece model ({e}); "
                            "delete it to retrain, or point config.data.tokenizer.model_file elsewhere") from None
        self.model_file = model_file
        self.threads = None  # encode threads; None = SentencePiece's default (all cores); 1 in a store worker
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.eos_id = self.sp.pad_id(), self.sp.eos_id()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.proto = proto  # the model file's bytes (a run keeps a copy: salt_jax.eval reads it)
        self._fp = "sp-" + hashlib.sha256(proto).hexdigest()[:16]

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=self.threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id)])

    def fingerprint(self) -> str:
        return self._fp


class HFTokenizer:
    """A Hugging Face tokenizer (tokenizer.json, read by the `tokenizers` library; no network).

    Encodes without special tokens (documents are separated by EOS in the
    token cache); pad is the tokenizer's pad token, else its EOS. The ids of
    special tokens come from tokenizer_config.json / special_tokens_map.json,
    else config.json.
    """

    def __init__(self, directory: str):
        from tokenizers import Tokenizer

        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing; config.data.tokenizer.hf_dir must hold a Hugging Face tokenizer.json "
                            "(save it with tokenizer.save_pretrained)")
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises its own exception type on bad files
            raise UserError(f"{path}: not a readable tokenizer.json ({e})") from None
        self.directory = directory
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        special = self._special_tokens(directory)
        self.eos_id = special.get("eos")
        if self.eos_id is None:
            raise UserError(f"{directory}: the tokenizer has no EOS token (eos_token in tokenizer_config.json or "
                            "eos_token_id in config.json); documents need a separator")
        self.bos_id = special.get("bos")
        self.pad_id = special["pad"] if special.get("pad") is not None else self.eos_id
        with open(path, "rb") as fh:
            self._fp = "hf-tok-" + hashlib.sha256(fh.read()).hexdigest()[:16]

    def _special_tokens(self, directory: str) -> dict:
        """{'eos'|'bos'|'pad': id} from the tokenizer's config files, then the model's config.json."""
        out: dict = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            try:
                with open(os.path.join(directory, name)) as fh:
                    conf = json.load(fh)
            except (OSError, ValueError):
                continue
            for kind in ("eos", "bos", "pad"):
                token = conf.get(f"{kind}_token")
                token = token.get("content") if isinstance(token, dict) else token
                if out.get(kind) is None and isinstance(token, str):
                    out[kind] = self.tok.token_to_id(token)
        try:
            with open(os.path.join(directory, "config.json")) as fh:
                conf = json.load(fh)
        except (OSError, ValueError):
            conf = {}
        for kind in ("eos", "bos", "pad"):
            value = conf.get(f"{kind}_token_id")
            value = value[0] if isinstance(value, list) and value else value
            if out.get(kind) is None and isinstance(value, int):
                out[kind] = value
        return out

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def fingerprint(self) -> str:
        return self._fp


def training_lines(docs: Iterable[str], max_lines: int, seed: int) -> list[str]:
    """A reproducible sample of at most max_lines non-empty lines."""
    lines = [ln for doc in docs for ln in doc.split("\n") if ln.strip()]
    if len(lines) > max_lines:
        lines = random.Random(seed).sample(lines, max_lines)
    return lines


def train_sentencepiece(docs: Iterable[str], vocab_size: int, model_type: str, max_lines: int,
                        out_file: str) -> None:
    """Trains a SentencePiece model on lines of `docs` and writes it atomically."""
    import sentencepiece as spm

    lines = training_lines(docs, max_lines, seed=0)
    if not lines:
        raise UserError("config.data: the train split has no text to train the tokenizer on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=3,
            byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
            remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n"], max_sentence_length=1 << 14, num_threads=os.cpu_count() or 1,
            minloglevel=2)
    except RuntimeError as e:
        raise UserError(f"config.data.tokenizer: SentencePiece training failed ({e}); {_sentencepiece_hint(str(e))}"
                        ) from None
    paths.write_atomic(out_file, model.getvalue())


def _sentencepiece_hint(message: str) -> str:
    """What to change, from SentencePiece's own reason: its two vocabulary-size bounds point opposite ways."""
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
        return (f"raise config.data.tokenizer.vocab_size to at least {too_small.group(2)} (the corpus's characters "
                "need that many pieces; config.model.vocab_size at least as large), or use "
                "config.data.tokenizer.kind=bytes")
    too_high = re.search(r"value <= (\d+)", message)
    if too_high:
        return f"lower config.data.tokenizer.vocab_size to at most {too_high.group(1)}, or give more text"
    return "check config.data.tokenizer.vocab_size against the corpus, or give more text"


KINDS = ("bytes", "sentencepiece", "hf")  # config.data.tokenizer.kind: ByteTokenizer, SentencePieceTokenizer, HFTokenizer


def make_tokenizer(tok_cfg: ml_collections.ConfigDict, source, cache_dir: str, train: bool = True) -> Tokenizer:
    """The tokenizer of config.data.tokenizer, training and caching SentencePiece if needed.

    `train=False` waits for another process (host 0 of a shared cache) to train it instead, so every
    host tokenizes with the same model file.
    """
    kind = tok_cfg.kind
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "hf":
        if not tok_cfg.get("hf_dir"):
            raise UserError("config.data.tokenizer.hf_dir is empty; name a local Hugging Face model directory "
                            "(or use a Hugging Face teacher, whose tokenizer is then used)")
        return HFTokenizer(tok_cfg.hf_dir)
    if kind != "sentencepiece":
        raise UserError(f"config.data.tokenizer.kind={kind!r}: use {listed(KINDS)}")
    if tok_cfg.get("model_file"):
        if not paths.isfile(tok_cfg.model_file):
            raise UserError(f"config.data.tokenizer.model_file={tok_cfg.model_file}: no such file")
        return SentencePieceTokenizer(tok_cfg.model_file)
    key = hashlib.sha256(f"{source.fingerprint()}:{tok_cfg.vocab_size}:{tok_cfg.model_type}:"
                         f"{tok_cfg.max_train_lines}".encode()).hexdigest()[:16]
    path = paths.join(cache_dir, "tokenizers", f"sp-{key}.model")
    if not paths.exists(path) and not train:
        paths.wait_for(lambda: paths.exists(path), f"host 0 to train the tokenizer {path}")
    if not paths.exists(path):
        paths.makedirs(paths.join(cache_dir, "tokenizers"))
        logging.info("training a SentencePiece tokenizer (vocab %d) -> %s", tok_cfg.vocab_size, path)
        train_sentencepiece(itertools.islice(source.documents("train"), None), tok_cfg.vocab_size,
                            tok_cfg.model_type, tok_cfg.max_train_lines, path)
    return SentencePieceTokenizer(path)


def described(tok_cfg: ml_collections.ConfigDict) -> tuple[str | None, int]:
    """(fingerprint, vocabulary size) of config.data.tokenizer without training or encoding anything.

    Bytes, a Hugging Face tokenizer and a given SentencePiece model_file are read (a file each); a
    SentencePiece model still to be trained on the train split has no fingerprint yet (None), and
    tok_cfg.vocab_size pieces.
    """
    if tok_cfg.kind == "sentencepiece" and not tok_cfg.get("model_file"):
        return None, int(tok_cfg.vocab_size)
    tok = make_tokenizer(tok_cfg, None, "")  # (no source or cache needed: nothing is trained)
    return tok.fingerprint(), tok.vocab_size


KEPT = "tokenizer"  # <workdir>/tokenizer/: the run's copy of its tokenizer
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
            "merges.txt", "chat_template.jinja")  # (HFTokenizer reads tokenizer.json; the rest goes with exports)


def keep(tok: Tokenizer, workdir: str) -> None:
    """Copies the run's tokenizer into workdir/tokenizer/ (once): a SentencePiece model as tokenizer.model; a
    Hugging Face tokenizer's files, with the special ids it resolved in config.json. Bytes need no file."""
    if kept(workdir) is not None:
        return
    if isinstance(tok, SentencePieceTokenizer):
        files = {"tokenizer.model": tok.proto}
    elif isinstance(tok, HFTokenizer):
        files = {}
        for name in HF_FILES:
            if os.path.isfile(os.path.join(tok.directory, name)):
                with open(os.path.join(tok.directory, name), "rb") as fh:
                    files[name] = fh.read()
        ids = {f"{k}_token_id": v for k, v in (("eos", tok.eos_id), ("bos", tok.bos_id), ("pad", tok.pad_id))
               if v is not None}
        files["config.json"] = json.dumps(ids, indent=2, sort_keys=True).encode()
    else:
        return
    directory = paths.join(workdir, KEPT)
    paths.makedirs(directory)
    for name in sorted(files, key=lambda n: n.startswith("tokenizer.")):  # (what `kept` looks for: last)
        paths.write_atomic(paths.join(directory, name), files[name])


def kept(workdir: str) -> Tokenizer | None:
    """The tokenizer a run kept in workdir/tokenizer/ (or, from older runs, workdir/tokenizer.model), or None."""
    directory = paths.join(workdir, KEPT)
    if paths.exists(paths.join(directory, "tokenizer.json")):
        if paths.is_remote(directory):  # (the tokenizers library reads local files)
            local = tempfile.mkdtemp(prefix="salt_jax_tokenizer_")
            for name in paths.listdir(directory):
                with paths.open(paths.join(directory, name), "rb") as src, open(os.path.join(local, name), "wb") as dst:
                    dst.write(src.read())
            directory = local
        return HFTokenizer(directory)
    for path in (paths.join(directory, "tokenizer.model"), paths.join(workdir, "tokenizer.model")):
        if paths.exists(path):
            return SentencePieceTokenizer(path)
    return None


def run_tokenizer(workdir: str, record: dict, run_config: dict, cache_dirs: Iterable[str] = ()) -> Tokenizer | None:
    """The tokenizer a checkpoint's run trained with, its fingerprint checked against the checkpoint's record.

    In order: an imported Hugging Face checkpoint's copy (record["hf_tokenizer"]), the run's kept copy
    (workdir/tokenizer/), then what its config.json names (hf_dir, model_file, else a SentencePiece model in
    one of `cache_dirs`' tokenizers/ found by its fingerprint, else bytes). None for an imported checkpoint
    that came without a tokenizer.
    """
    tok_cfg = dict((run_config.get("data") or {}).get("tokenizer") or {})
    want = record.get("tokenizer", "")
    if record.get("hf_tokenizer"):  # an imported Hugging Face checkpoint
        tok = HFTokenizer(os.path.join(workdir, record["hf_tokenizer"]))
    elif record.get("hf"):  # imported without a tokenizer
        return None
    else:
        tok = kept(workdir)
    if tok is not None:
        pass
    elif tok_cfg.get("kind") == "hf":
        if not os.path.isfile(os.path.join(tok_cfg.get("hf_dir") or "", "tokenizer.json")):
            raise UserError(f"{workdir}: keeps no copy of its tokenizer, and the Hugging Face tokenizer it names "
                            f"(config.data.tokenizer.hf_dir={tok_cfg.get('hf_dir')}) is gone; copy that "
                            f"directory's tokenizer files into {paths.join(workdir, KEPT)}")
        tok = HFTokenizer(tok_cfg["hf_dir"])
    elif tok_cfg.get("kind") == "sentencepiece" or want.startswith("sp-"):
        tok = _cached_sentencepiece(workdir, tok_cfg, want, cache_dirs)
    else:
        tok = ByteTokenizer()
    if want and tok.fingerprint() != want:
        raise UserError(f"{workdir}: the checkpoint was trained with tokenizer {want}, but {tok.fingerprint()} "
                        "was found; point the run at its own tokenizer (config.data.tokenizer)")
    return tok


def _cached_sentencepiece(workdir: str, tok_cfg: dict, want: str, cache_dirs: Iterable[str]) -> Tokenizer:
    if tok_cfg.get("model_file") and paths.exists(tok_cfg["model_file"]):
        return SentencePieceTokenizer(tok_cfg["model_file"])
    for directory in dict.fromkeys(paths.join(d, "tokenizers") for d in cache_dirs if d):
        if not paths.isdir(directory):
            continue
        for name in sorted(paths.listdir(directory)):
            if name.endswith(".model"):
                tok = SentencePieceTokenizer(paths.join(directory, name))
                if tok.fingerprint() == want:
                    return tok
    raise UserError(f"{workdir}: its SentencePiece tokenizer ({want}) is neither in {KEPT}/tokenizer.model nor in "
                    f"the token cache; copy the run's .model file to {paths.join(workdir, KEPT, 'tokenizer.model')}")
