"""A run's tokenizer as Hugging Face files: what `export` writes beside the weights.

`write(tok, out)` writes, for `AutoTokenizer.from_pretrained(out)`:
- a Hugging Face tokenizer (kind=hf): its files, copied;
- SentencePiece: tokenizer.json built from the model (`sentencepiece_tokenizer`) +
  tokenizer_config.json, and the model itself as tokenizer.model;
- bytes: tokenizer.json of 259 ids (pad, eos, bos, then the 256 bytes) + tokenizer_config.json.

The tokenizer.json reproduces SentencePiece's encoding: the model's pieces and
scores (BPE merges in the order of the merged piece's score; Unigram scores,
with byte, control and unknown pieces out of reach of the text, as in
SentencePiece), its normalizer (a precompiled charsmap where it has one,
spaces as "▁", the dummy prefix once at the start), byte fallback, and no
special token matched in the text (`split_special_tokens`: "</s>" in a text is
text, as for SentencePiece) and none added (no BOS or EOS: the run's documents
had none). BPE (the default) encodes every text as the model does
(tests/test_hf.py); Unigram can differ where two segmentations score the same
up to float32 rounding (runs of spaces), and decodes to the same text.
Imports the `tokenizers` library (the [hf] extra) and never torch or transformers.
"""

from __future__ import annotations

import json
import os

from salt_jax.data.tokenizer import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, Tokenizer
from salt_jax.hf.files import copy_tokenizer, special_ids

# SentencePiece piece types (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_tokenizer(proto: bytes):
    """A tokenizers.Tokenizer that encodes and decodes as the SentencePiece model `proto` (BPE or Unigram)."""
    import tokenizers
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, decoders, models, normalizers

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(proto)
    pieces = [(p.piece, p.score, p.type) for p in m.pieces]
    spec, norm = m.trainer_spec, m.normalizer_spec
    if spec.model_type == 1:  # Unigram: SentencePiece never matches byte, control or unknown pieces in the text
        low = min((s for _, s, t in pieces if t == NORMAL), default=0.0) - 1e6
        model = models.Unigram([(p, s if t in (NORMAL, USER_DEFINED) else low) for p, s, t in pieces],
                               unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
    elif spec.model_type == 2:  # BPE: a merge per split of each normal piece, in the order of its score
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        parts = {p for p, _, t in pieces if t in (NORMAL, USER_DEFINED)}
        merges = [(p[:k], p[k:]) for i, (p, _, t) in sorted(enumerate(pieces), key=lambda x: (-x[1][1], x[0]))
                  if t == NORMAL for k in range(1, len(p)) if p[:k] in parts and p[k:] in parts]
        model = models.BPE(vocab, merges, unk_token=pieces[spec.unk_id][0], fuse_unk=True,
                           byte_fallback=spec.byte_fallback)
    else:
        raise ValueError(f"SentencePiece model_type {spec.model_type}: only BPE and Unigram models convert")
    tok = tokenizers.Tokenizer(model)
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(tokenizers.Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", "▁"))
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tail = [decoders.Strip(content=" ", left=1, right=0)] if norm.add_dummy_prefix else []
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *tail])
    longer = [AddedToken(p, special=False, normalized=True) for p, _, t in pieces if t == USER_DEFINED and len(p) > 1]
    if longer:  # (one-character user symbols are plain pieces no merge includes, as in SentencePiece)
        tok.add_tokens(longer)
    return tok


def bytes_tokenizer():
    """A tokenizers.Tokenizer with ByteTokenizer's ids: <pad>, </s>, <s>, then <0x00>..<0xFF>."""
    import tokenizers
    from tokenizers import decoders, models

    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, **{f"<0x{b:02X}>": ByteTokenizer.offset + b for b in range(256)}}
    tok = tokenizers.Tokenizer(models.BPE(vocab, [], byte_fallback=True))  # every character falls back to bytes
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return tok


def write(tok: Tokenizer, out: str, max_len: int) -> dict:
    """Writes `tok`'s Hugging Face files into `out`; returns its special ids ({"eos_token_id", ...}) for
    config.json."""
    if isinstance(tok, HFTokenizer):
        copy_tokenizer(tok.directory, out)
        return special_ids(tok.directory)
    if isinstance(tok, SentencePieceTokenizer):
        built, names = sentencepiece_tokenizer(tok.proto), [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
        with open(os.path.join(out, "tokenizer.model"), "wb") as fh:
            fh.write(tok.proto)
        unk = tok.sp.unk_id()
    elif isinstance(tok, ByteTokenizer):
        built, names, unk = bytes_tokenizer(), ["<pad>", "</s>", "<s>"], -1
    else:
        raise TypeError(f"no Hugging Face form for {type(tok).__name__}")
    built.save(os.path.join(out, "tokenizer.json"))
    ids = {"pad": tok.pad_id, "eos": tok.eos_id, "bos": getattr(tok, "bos_id", None), "unk": unk}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "split_special_tokens": True, "add_bos_token": False,
              "add_eos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": max_len,
              **{f"{k}_token": names[i] for k, i in ids.items() if i is not None and i >= 0}}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
    return {f"{k}_token_id": i for k, i in ids.items() if k != "unk" and i is not None and i >= 0}
