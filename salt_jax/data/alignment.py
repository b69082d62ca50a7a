"""The same text in two tokenizations, aligned: what cross-tokenizer KD (ALM) needs of each batch.

A student row is seq_len + 1 ids of packed documents separated by EOS. For a
teacher with another tokenizer the row is decoded to bytes (each id's bytes
from `TokenBytes`, no normalisation), each document piece is encoded by the
teacher's tokenizer, and the teacher's row is those ids with the teacher's EOS
where the student has one, cut or padded to `teacher_len` + 1 ids.

Both rows then cover one line of bytes (an EOS counts as one unit). A
*boundary* is a point of that line where a token ends in both tokenizations; a
*chunk* is the span between two consecutive boundaries. `align_row` gives
every target position of each row its chunk (or -1): chunks are kept when both
sides have target tokens in them, so the window's cut ends (before the first
boundary, after the last one when the row does not end with EOS) are dropped,
and an EOS is a chunk of its own. Chunks are numbered 0.. per row.

Why decode and re-encode per step in the loader rather than store the teacher's
tokens beside the token store: the student's store, batches and resume stay
exactly as they are (any store, mixture or SALT_DS selection works across
tokenizers), the teacher's length is a run setting rather than a property of a
store, and the cost is host time on the read-ahead thread (measured in
docs/performance.md: well under the step at the demo size).

What does not line up is never cut silently: a document piece whose bytes the
teacher's tokens do not reproduce (a tokenizer that normalises text or maps
characters to <unk>) has no chunks (`stats[:, UNENCODABLE]`, summed into the
metrics line as `unencodable_pieces`), chunks beyond the teacher's
`teacher_len` are counted (`truncated_chunks`), and so are chunks of more than
MAX_CHUNK student tokens, which are not kept (`long_chunks`: the chunked loss
completes each chunk within 16 positions of it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable, NamedTuple

import jax
import numpy as np

VERSION = 2  # of the alignment's rules: keys what depends on its chunk numbers (the teacher cache, SALT_DS scores)
STATS = ("truncated_chunks", "unencodable_pieces", "long_chunks")  # per-row counts the batch carries to the metrics
TRUNCATED, UNENCODABLE, LONG = 0, 1, 2
MAX_CHUNK = 16  # student tokens per chunk at most (the chunked loss completes a chunk within 16 positions each side)


class AlignedBatch(NamedTuple):
    """One batch of a cross-tokenizer KD step: the student's rows and the teacher's view of the same text.

    student_chunks[b, i] is the chunk of the student's target i (= tokens[b, i + 1]), -1 outside every
    chunk; teacher_chunks likewise for teacher_tokens; stats[b] the row's STATS counts.
    """

    tokens: np.ndarray  # [B, T + 1] the student's ids
    teacher_tokens: np.ndarray  # [B, U + 1] the teacher's ids
    student_chunks: np.ndarray  # [B, T] int32
    teacher_chunks: np.ndarray  # [B, U] int32
    stats: np.ndarray  # [B, len(STATS)] int32


def _gpt2_byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character map (byte-level BPE vocabularies: GPT-2, Llama 3,
    Qwen2, SmolLM2 spell every byte as one of these characters)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _piece_bytes(piece: str) -> bytes:
    """A SentencePiece-style piece's bytes: '▁' is a space, '<0xAB>' one byte (byte fallback)."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode("utf-8")


@dataclasses.dataclass
class TokenBytes:
    """Each id's bytes in a tokenizer (None: a special id with no text), and whether encoding a text adds a
    leading space the text does not have (SentencePiece's dummy prefix)."""

    table: list  # id -> bytes | None
    eos_id: int
    pad_id: int
    dummy_prefix: bool

    @classmethod
    def of(cls, tok) -> "TokenBytes":
        """The table of a salt_jax tokenizer (salt_jax.data.tokenizer: bytes, SentencePiece or Hugging Face)."""
        from salt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415 -- (the kinds; no cycle at import)

        if isinstance(tok, tokenizer_lib.ByteTokenizer):
            table = [None] * tok.offset + [bytes([b]) for b in range(256)]
        elif isinstance(tok, tokenizer_lib.SentencePieceTokenizer):
            sp = tok.sp
            table = [None if sp.is_control(i) or sp.is_unknown(i) else _piece_bytes(sp.id_to_piece(i))
                     for i in range(sp.get_piece_size())]
        elif isinstance(tok, tokenizer_lib.HFTokenizer):
            table = _hf_table(tok.tok)
        else:
            raise TypeError(f"no byte table for {type(tok).__name__}")
        return cls(table, tok.eos_id, tok.pad_id, _adds_prefix(tok, table))

    def widths(self, ids) -> np.ndarray:
        return np.array([len(self.table[i]) if self.table[i] is not None else 0 for i in ids], np.int64)


def _hf_table(tok) -> list:
    """Each id's bytes from a `tokenizers.Tokenizer`: byte-level vocabularies through GPT-2's byte map, others as
    SentencePiece-style pieces; special added tokens have none."""
    spec = json.loads(tok.to_str())
    kinds = json.dumps(spec.get("decoder")) + json.dumps(spec.get("pre_tokenizer"))
    byte_level = '"ByteLevel"' in kinds
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    decoder = _gpt2_byte_decoder()
    table: list = [None] * tok.get_vocab_size(with_added_tokens=True)
    for piece, i in tok.get_vocab(with_added_tokens=True).items():
        if i in special or i >= len(table):
            continue
        if byte_level and all(c in decoder for c in piece):
            table[i] = bytes(decoder[c] for c in piece)
        else:
            table[i] = _piece_bytes(piece)
    return table


def _adds_prefix(tok, table: list) -> bool:
    """Whether `tok` encodes "a" with a leading space (a dummy prefix the text does not have)."""
    ids = tok.encode(["a"])[0]
    got = b"".join(table[i] or b"" for i in ids)
    return got == b" a"


def _utf8_trim(data: bytes) -> tuple[int, int]:
    """(bytes to drop at the start, at the end) so that `data` decodes: a window cut inside a character leaves
    continuation bytes at its start and an incomplete character at its end."""
    head = 0
    while head < len(data) and head < 3 and 0x80 <= data[head] < 0xC0:
        head += 1
    tail = 0
    for back in range(1, min(4, len(data) - head) + 1):
        b = data[-back]
        if b < 0x80:
            break
        if b >= 0xC0:  # a lead byte: is its character complete?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            tail = back if back < need else 0
            break
    return head, tail


def teacher_len(seq_len: int, student_bytes_per_token: float, teacher_bytes_per_token: float,
                slack: float = 1.25, multiple: int = 16) -> int:
    """The teacher's tokens per window (config.salt.teacher_seq_len=0): seq_len times the ratio of the two
    tokenizers' bytes per token on the same text, times `slack` for windows denser than the mean, rounded up to
    `multiple`. Chunks past it are counted (`truncated_chunks`), never cut silently."""
    ratio = student_bytes_per_token / max(teacher_bytes_per_token, 1e-9)
    return int(math.ceil(seq_len * ratio * slack / multiple) * multiple)


class Aligner:
    """Aligns student rows with the teacher's tokenization of the same text (`align`), `teacher_len` + 1
    teacher ids per row. `encode` is the teacher's tokenizer (texts -> id lists, no special tokens)."""

    def __init__(self, student: TokenBytes, teacher: TokenBytes, encode: Callable[[list[str]], list[list[int]]],
                 teacher_len: int, teacher_fingerprint: str = ""):
        self.student, self.teacher, self.encode, self.teacher_len = student, teacher, encode, int(teacher_len)
        self.teacher_fingerprint = teacher_fingerprint  # (keys what depends on the pair: the teacher cache)

    @classmethod
    def of(cls, student_tok, teacher_tok, teacher_len: int) -> "Aligner":
        """The Aligner of two salt_jax tokenizers (salt_jax.data.tokenizer)."""
        return cls(TokenBytes.of(student_tok), TokenBytes.of(teacher_tok), teacher_tok.encode, teacher_len,
                   teacher_tok.fingerprint())

    def bytes_per_token(self, rows: np.ndarray) -> tuple[float, float]:
        """(student, teacher) bytes per token on the text of `rows` (EOS excluded): what `teacher_len` is
        sized from."""
        texts = [t for row in rows for t in self._pieces(row)[1] if t]
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        n_student = sum(int(np.sum(~np.isin(row, (self.student.eos_id, self.student.pad_id)))) for row in rows)
        n_teacher = sum(len(ids) for ids in self.encode(texts)) if texts else 0
        return n_bytes / max(n_student, 1), n_bytes / max(n_teacher, 1)

    def pieces(self, row: np.ndarray) -> list:
        """The row's document pieces' texts (None: a piece with an id that has no bytes)."""
        return self._pieces(row)[1]

    def _pieces(self, row: np.ndarray):
        """The row's document pieces: (per piece: (first, stop) token index, its text, bytes trimmed at its
        start), with the student tokens' widths on the line."""
        s = self.student
        ids = [int(i) for i in row]
        widths = s.widths(ids)
        sep = np.isin(row, (s.eos_id, s.pad_id))
        widths[sep] = 1
        spans, texts, heads = [], [], []
        i, n = 0, len(ids)
        while i < n:
            if sep[i]:
                i += 1
                continue
            j = i
            while j < n and not sep[j]:
                j += 1
            if i > 0 and s.dummy_prefix and widths[i] > 0 and s.table[ids[i]][:1] == b" ":
                widths[i] -= 1  # the dummy prefix of a document's first piece: not in the text
            data = b"".join(s.table[k] or b"" for k in ids[i:j])
            if i > 0 and s.dummy_prefix and data[:1] == b" ":
                data = data[1:]
            head, tail = _utf8_trim(data) if (i == 0 or j == n) else (0, 0)
            if i > 0:
                head = 0
            if j < n:
                tail = 0
            try:
                text = data[head:len(data) - tail].decode("utf-8")
            except UnicodeDecodeError:
                text = None
            bad = any(s.table[k] is None for k in ids[i:j])
            spans.append((i, j, bad))
            texts.append(None if bad else text)
            heads.append(head)
            i = j
        return (spans, heads, widths), texts

    def align(self, rows: np.ndarray) -> AlignedBatch:
        """The AlignedBatch of student `rows` [B, T + 1]."""
        pieces = [self._pieces(row) for row in rows]
        flat = [t for _, texts in pieces for t in texts if t]
        encoded = iter(self.encode(flat) if flat else [])
        b, t1 = rows.shape
        u = self.teacher_len
        t_tokens = np.full((b, u + 1), self.teacher.pad_id, np.int32)
        s_chunks = np.full((b, t1 - 1), -1, np.int32)
        t_chunks = np.full((b, u), -1, np.int32)
        stats = np.zeros((b, len(STATS)), np.int32)
        for r, ((layout, texts), row) in enumerate(zip(pieces, rows)):
            t_ids = [next(encoded) if text else [] for text in texts]
            t_tokens[r], s_chunks[r], t_chunks[r], stats[r] = self._align_row(row, layout, texts, t_ids)
        return AlignedBatch(rows.astype(np.int32), t_tokens, s_chunks, t_chunks, stats)

    def _align_row(self, row, layout, texts, t_ids):
        spans, heads, s_widths = layout
        s, t, u = self.student, self.teacher, self.teacher_len
        n = len(row)
        s_ends = np.cumsum(s_widths)
        s_starts = s_ends - s_widths
        # The teacher's ids and their (start, end) on the same line, piece by piece.
        ids: list[int] = []
        starts: list[int] = []
        ends: list[int] = []
        bad_student: list[int] = []  # token indices of pieces the teacher cannot reproduce, and their separators
        bad_teacher: list[int] = []

        def separators(first: int, stop: int, at: int) -> int:
            """The student's separators first..stop-1 on both sides (EOS as EOS, else pad), one unit each."""
            for k in range(first, stop):
                ids.append(t.eos_id if row[k] == s.eos_id else t.pad_id)
                starts.append(at)
                at += 1
                ends.append(at)
            return at

        unencodable = 0
        pos = 0
        prev_stop = 0
        for (i, j, bad), head, text, piece_ids in zip(spans, heads, texts, t_ids):
            pos = separators(prev_stop, i, pos)
            piece_start = pos
            piece_end = pos + int(np.sum(s_widths[i:j]))
            w = t.widths(piece_ids)
            data = text.encode("utf-8") if text else b""
            got = b"".join(t.table[x] or b"" for x in piece_ids)
            if t.dummy_prefix and got == b" " + data and len(w):
                w[0] -= 1
                got = data
            if text is None or got != data:
                unencodable += 1
                bad_student.extend(range(i, j + 1))  # (j: the separator after it, when there is one)
                bad_teacher.extend(range(len(ids), len(ids) + len(piece_ids) + 1))
                w = np.zeros(len(piece_ids), np.int64)
            p = piece_start + head
            for x, width in zip(piece_ids, w):
                ids.append(int(x))
                starts.append(p)
                p += int(width)
                ends.append(p)
            pos = piece_end
            prev_stop = j
        separators(prev_stop, n, pos)
        t_starts, t_ends = np.array(starts, np.int64), np.array(ends, np.int64)

        # Boundaries: ends in both tokenizations; the row's cut end is not one (unless the row ends with EOS).
        cut_end = s_ends[-1] if row[-1] not in (s.eos_id, s.pad_id) else -1
        common_all = np.intersect1d(s_ends, t_ends)
        common_all = common_all[common_all != cut_end]
        kept = min(len(ids), u + 1)
        common = np.intersect1d(s_ends, t_ends[:kept])
        common = common[common != cut_end]
        truncated = max(0, len(common_all) - len(common))

        def chunk_of(token_starts):
            k = np.searchsorted(common, token_starts, side="right") - 1
            return np.where((k >= 0) & (k < len(common) - 1), k, -1)

        s_k = chunk_of(s_starts[1:])
        t_k = chunk_of(t_starts[1:kept])
        if s.pad_id != s.eos_id:  # padding (a held-out or scored batch's last rows) is in no chunk
            s_k[np.asarray(row[1:]) == s.pad_id] = -1
        both = np.intersect1d(s_k[s_k >= 0], t_k[t_k >= 0])
        # no chunk holding a token of a piece the teacher cannot reproduce (or the separator after it), on either side
        bad = np.concatenate([s_k[[x - 1 for x in bad_student if 0 < x < n]],
                              t_k[[x - 1 for x in bad_teacher if 0 < x < kept]]])
        both = np.setdiff1d(both, bad[bad >= 0])
        ids_, sizes = np.unique(s_k[s_k >= 0], return_counts=True)
        long = np.intersect1d(both, ids_[sizes > MAX_CHUNK])
        both = np.setdiff1d(both, long)
        renumber = np.full(max(len(common), 1), -1, np.int64)
        renumber[both] = np.arange(len(both))
        s_out = np.where(s_k >= 0, renumber[np.maximum(s_k, 0)], -1)
        t_out = np.full(u, -1, np.int64)
        t_out[:len(t_k)] = np.where(t_k >= 0, renumber[np.maximum(t_k, 0)], -1)
        t_row = np.full(u + 1, t.pad_id, np.int64)
        t_row[:kept] = ids[:kept]
        return t_row, s_out, t_out, (truncated, unencodable, len(long))


class AlignedBatches:
    """Step-indexed batches (salt_jax.data.batches.Batches) with each row aligned to the teacher's tokenization:
    `numpy(step)` is this host's AlignedBatch, `device(step, sharding)` the global one on the mesh. A pure
    function of the step like the batches it wraps, so resume and any number of hosts see the same batches."""

    def __init__(self, batches, aligner: Aligner):
        self.batches, self.aligner = batches, aligner
        self.batch_size = batches.batch_size

    def numpy(self, step: int) -> AlignedBatch:
        return self.aligner.align(self.batches.numpy(step))

    def device(self, step: int, sharding, rows: AlignedBatch | None = None) -> AlignedBatch:
        got = self.numpy(step) if rows is None else rows
        return AlignedBatch(*(jax.make_array_from_process_local_data(
            sharding, a, (self.batch_size, *a.shape[1:])) for a in got))


def shapes(batch_size: int, seq_len: int, teacher_len: int, sharding) -> AlignedBatch:
    """An AlignedBatch of ShapeDtypeStructs (to lower and compile the cross-tokenizer step from shapes)."""
    def sds(*shape):
        return jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding)
    return AlignedBatch(sds(batch_size, seq_len + 1), sds(batch_size, teacher_len + 1), sds(batch_size, seq_len),
                        sds(batch_size, teacher_len), sds(batch_size, len(STATS)))


def first_rows(batches, n: int) -> np.ndarray:
    """The first n rows of the first steps' global batches (what teacher_len is measured on: the same rows on
    every host)."""
    out, step = [], 0
    while sum(len(r) for r in out) < n:
        out.append(batches.split.rows(batches.indices(step)))
        step += 1
    return np.concatenate(out)[:n]
