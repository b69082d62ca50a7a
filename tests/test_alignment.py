"""Cross-tokenizer alignment (salt_jax.data.alignment) on hand-worked strings, and on real tokenizers."""


import numpy as np
import pytest

from salt_jax.data import alignment
from salt_jax.data.alignment import Aligner, TokenBytes

PAD, EOS = 0, 1


def _bytes(pieces):
    """A TokenBytes over hand-written pieces: ids 0 (pad) and 1 (EOS), then the pieces from id 2."""
    return [None, None] + [p if isinstance(p, bytes) else p.encode() for p in pieces]


def _student(pieces, dummy_prefix=False):
    return TokenBytes(_bytes(pieces), EOS, PAD, dummy_prefix)


def _greedy(pieces, prefix=""):
    """A teacher tokenizer: greedy longest match over `pieces` (ids from 2), optionally adding `prefix` first."""
    table = {p.encode() if isinstance(p, str) else p: i + 2 for i, p in enumerate(pieces)}

    def encode(texts):
        out = []
        for text in texts:
            data, ids = (prefix + text).encode(), []
            while data:
                n = max(k for k in range(1, len(data) + 1) if data[:k] in table)
                ids.append(table[data[:n]])
                data = data[n:]
            out.append(ids)
        return out
    return encode


def _align(student_pieces, row_pieces, teacher_pieces, teacher_len=8, dummy=False, teacher_prefix=""):
    """Aligns one student row given as pieces (EOS as None) against a greedy teacher."""
    s = _student(student_pieces, dummy)
    ids = [EOS if p is None else 2 + student_pieces.index(p) for p in row_pieces]
    t = TokenBytes(_bytes(teacher_pieces), EOS, PAD, bool(teacher_prefix))
    a = Aligner(s, t, _greedy(teacher_pieces, teacher_prefix), teacher_len)
    got = a.align(np.array([ids]))
    names = [None, "<eos>"] + teacher_pieces
    return got, [names[i] if i else "<pad>" for i in got.teacher_tokens[0]]


def test_whitespace_merged_into_tokens_differently():
    # "def f(x)" + EOS: student de|f| f|(x|)  teacher "def "|f|(|x)  -> boundaries where both end: after
    # "def f" (5), after ")" (8), after EOS (9); chunks "(x)" and EOS. "f f" has no start boundary in common.
    got, teacher = _align(["de", "f", " f", "(x", ")"], ["de", "f", " f", "(x", ")", None],
                          ["def ", "f", "(", "x)"])
    assert teacher[:5] == ["def ", "f", "(", "x)", "<eos>"] and teacher[5:] == ["<pad>"] * 4
    assert got.student_chunks[0].tolist() == [-1, -1, 0, 0, 1]  # targets f, " f", "(x", ")", EOS
    assert got.teacher_chunks[0].tolist() == [-1, 0, 0, 1, -1, -1, -1, -1]  # targets f, (, x), EOS, pads
    assert got.stats[0].tolist() == [0, 0, 0]


def test_multibyte_utf8_against_byte_fallback_pieces():
    # "a é" (é = C3 A9): the student spells é as two byte-fallback pieces, the teacher has " é" as one token;
    # the byte between C3 and A9 is a student boundary only, so " ", C3 and A9 form one chunk with " é".
    got, teacher = _align(["a", " ", b"\xc3", b"\xa9", "x"], ["a", " ", b"\xc3", b"\xa9", "x", None],
                          ["a", " é", "x"])
    assert teacher[:4] == ["a", " é", "x", "<eos>"]
    assert got.student_chunks[0].tolist() == [0, 0, 0, 1, 2]
    assert got.teacher_chunks[0].tolist()[:3] == [0, 1, 2]


def test_window_cut_inside_a_character_and_inside_a_word():
    # The window starts on A9 (the end of an é) and ends inside text: the teacher never sees the stray byte
    # (its first token starts one byte in), the part before the first common boundary and the part after the
    # last one are dropped: only " c" is a chunk.
    got, teacher = _align([b"\xa9", "b", " c", " d"], [b"\xa9", "b", " c", " d"], ["b", " c", " d"])
    assert teacher[:3] == ["b", " c", " d"]
    assert got.student_chunks[0].tolist() == [-1, 0, -1]
    assert got.teacher_chunks[0].tolist()[:2] == [0, -1]
    # ... and an incomplete character at the window's end is cut off the teacher's text
    got, teacher = _align(["a", " ", b"\xc3"], ["a", " ", "a", " ", b"\xc3"], ["a", " "])
    assert teacher[:4] == ["a", " ", "a", " "] and teacher[4] == "<pad>"
    assert got.student_chunks[0].tolist() == [0, 1, 2, -1]


def test_two_documents_joined_by_eos_with_a_dummy_prefix():
    # SentencePiece-style student: a document's first piece carries a dummy space (" x" for "x"), not in the
    # text; the teacher sees "a" EOS "xy" EOS. Every token is its own chunk, EOS included.
    got, teacher = _align(["a", " x", "y"], ["a", None, " x", "y", None], ["a", "x", "y"], dummy=True)
    assert teacher[:5] == ["a", "<eos>", "x", "y", "<eos>"]
    assert got.student_chunks[0].tolist() == [0, 1, 2, 3]
    assert got.teacher_chunks[0].tolist()[:4] == [0, 1, 2, 3]
    # a teacher that adds its own dummy prefix: its first token's space is not in the text either
    got, teacher = _align(["a", "b"], ["a", None, "a", "b", None], [" a", "a", "b"], teacher_prefix=" ")
    assert teacher[:5] == [" a", "<eos>", " a", "b", "<eos>"]
    assert got.student_chunks[0].tolist() == [0, 1, 2, 3]


def test_what_does_not_line_up_is_counted_not_cut_silently():
    # A teacher that lowercases cannot reproduce "AB": that piece has no chunks (counted); the next document
    # still aligns.
    s = _student(["A", "B", "c"])
    t = TokenBytes(_bytes(["a", "b", "c"]), EOS, PAD, False)
    lower = lambda texts: _greedy(["a", "b", "c"])([x.lower() for x in texts])  # noqa: E731
    got = Aligner(s, t, lower, 8).align(np.array([[2, 3, EOS, 4, 4, EOS]]))
    assert got.stats[0].tolist() == [0, 1, 0]
    assert got.student_chunks[0].tolist() == [-1, -1, 0, 1, 2]  # B and the EOS after AB: in the bad piece
    # a teacher length too small for the text: chunks past it are counted
    got, teacher = _align(["a"], ["a"] * 6 + [None], ["a"], teacher_len=3)
    assert teacher == ["a"] * 4
    assert got.student_chunks[0].tolist() == [0, 1, 2, -1, -1, -1]
    assert got.stats[0, alignment.TRUNCATED] == 3
    # a chunk longer than MAX_CHUNK student tokens (17 "a"s the teacher spells as one token) is not kept, counted
    n = alignment.MAX_CHUNK + 1
    got, teacher = _align(["a", "b"], ["b"] + ["a"] * n + ["b", None], ["b", "a" * n], teacher_len=8)
    assert teacher[:4] == ["b", "a" * n, "b", "<eos>"]
    assert got.student_chunks[0].tolist() == [-1] * n + [0, 1] and got.stats[0, alignment.LONG] == 1


def test_teacher_len_bound():
    assert alignment.teacher_len(128, 3.0, 4.0) == 128  # 128 x 0.75 x 1.25 = 120 -> 128
    assert alignment.teacher_len(128, 4.0, 1.0) == 640


@pytest.fixture(scope="module")
def real_tokenizers(tmp_path_factory, cache_dir):
    """A SentencePiece model (byte fallback, dummy prefix), bytes, and a byte-level BPE (Hugging Face)."""
    from salt_jax.data import sources, tokenizer
    from salt_jax.config import base_config
    from test_hf import _train_tokenizer

    c = base_config("test-tiny").data
    c.max_files, c.tokenizer.kind, c.tokenizer.vocab_size = 60, "sentencepiece", 384
    sp = tokenizer.make_tokenizer(c.tokenizer, sources.make_source(c), cache_dir)
    hf_dir = str(tmp_path_factory.mktemp("bpe"))
    _train_tokenizer(hf_dir)
    return {"sp": sp, "bytes": tokenizer.ByteTokenizer(), "bpe": tokenizer.HFTokenizer(hf_dir)}


TEXTS = ["def f(x):\n    return x + 1\n", "  héllo\t\t 日本 🎉\n\n", "class A:\n    pass", "x"]


@pytest.mark.parametrize("pair", [("sp", "bpe"), ("bpe", "sp"), ("sp", "bytes"), ("bytes", "bpe")])
def test_every_chunk_is_the_same_text_in_both_tokenizations(real_tokenizers, pair):
    """On real tokenizers, every chunk's student tokens and teacher tokens spell the same bytes, and every
    student target between the first and the last boundary is in a chunk (nothing between is dropped)."""
    student, teacher = (real_tokenizers[k] for k in pair)
    ids = [i for text in TEXTS for i in student.encode([text])[0] + [student.eos_id]]
    rows = np.array([ids[k:k + 33] for k in range(0, len(ids) - 33, 7)])  # windows cut anywhere
    a = Aligner.of(student, teacher, 96)
    got = a.align(rows)
    assert got.stats[:, alignment.TRUNCATED].sum() == 0 and got.stats[:, alignment.UNENCODABLE].sum() == 0
    s_tab, t_tab = a.student.table, a.teacher.table
    text = lambda tab, ids, eos: b"".join(b"|" if i == eos else (tab[i] or b"") for i in ids)  # noqa: E731
    n_chunks = 0
    for r in range(len(rows)):
        for c in range(got.student_chunks[r].max() + 1):
            where = np.flatnonzero(got.student_chunks[r] == c)
            s_text = text(s_tab, rows[r, 1:][where], student.eos_id)
            t_text = text(t_tab, got.teacher_tokens[r, 1:][got.teacher_chunks[r] == c], teacher.eos_id)
            if rows[r, where[0]] == student.eos_id:  # a document's first chunk: a dummy prefix is no text
                s_text = s_text[1:] if a.student.dummy_prefix and s_text[:1] == b" " else s_text
                t_text = t_text[1:] if a.teacher.dummy_prefix and t_text[:1] == b" " else t_text
            assert s_text == t_text, (r, c, s_text, t_text)
            n_chunks += 1
        inside = np.flatnonzero(got.student_chunks[r] >= 0)
        assert np.all(got.student_chunks[r][inside[0]:inside[-1] + 1] >= 0)
    assert n_chunks > 10 * len(rows)


def test_a_piece_the_teacher_cannot_reproduce_between_two_documents():
    """The lowercasing teacher again, the bad document in the middle of the row: no chunk holds its tokens or
    the EOS after it, on either side (it used to pair the student's EOS with the teacher's "a b EOS"); and a
    student id with no bytes (<unk>) makes its document unalignable the same way."""
    s = _student(["A", "B", "c", "a"])
    t = TokenBytes(_bytes(["a", "b", "c"]), EOS, PAD, False)
    lower = lambda texts: _greedy(["a", "b", "c"])([x.lower() for x in texts])  # noqa: E731
    got = Aligner(s, t, lower, 8).align(np.array([[4, EOS, 2, 3, EOS, 4, EOS]]))
    assert got.stats[0].tolist() == [0, 1, 0]
    # targets EOS | A B EOS | c EOS: the first EOS, then the bad document and its EOS dropped, then c and EOS
    assert got.student_chunks[0].tolist() == [0, -1, -1, -1, 1, 2]
    assert got.teacher_chunks[0].tolist()[:6] == [0, -1, -1, -1, 1, 2]
    s.table[3] = None  # "B" an id with no bytes (a special or unknown id)
    got = Aligner(s, t, _greedy(["a", "b", "c"]), 8).align(np.array([[4, EOS, 5, 3, EOS, 4, EOS]]))
    assert got.student_chunks[0].tolist() == [0, -1, -1, -1, 1, 2] and got.stats[0, alignment.UNENCODABLE] == 1


def test_a_teacher_that_cannot_reproduce_most_of_the_text_is_refused_and_some_is_said(caplog):
    """salt_jax.train.setup._check_encodable on the first rows: over half of the pieces unreproducible is one
    line naming config.salt.teacher; over 5% a warning; none, silence."""
    import logging

    from salt_jax.errors import UserError
    from salt_jax.train.setup import _check_encodable

    s = _student(["A", "b", "c"])
    t = TokenBytes(_bytes(["a", "b", "c"]), EOS, PAD, False)
    lower = lambda texts: _greedy(["a", "b", "c"])([x.lower() for x in texts])  # noqa: E731
    aligner = Aligner(s, t, lower, 16, "hf-tok-lower")
    mostly_upper = np.array([[2, 3, EOS, 2, 4, EOS, 3, 4, EOS]] * 4)  # "Ab", "Ac" bad; "bc" fine
    with pytest.raises(UserError, match=r"config.salt.teacher: the teacher's tokenizer \(hf-tok-lower\) does not "
                                        r"reproduce the text of 8 of 12 document pieces"):
        _check_encodable(aligner, mostly_upper)
    some = np.array([[2, 3, EOS] + [3, 4, EOS] * 3] * 4)  # 1 piece in 4 bad: said, not refused
    with caplog.at_level(logging.WARNING):
        _check_encodable(aligner, some)
    assert "4 of 16 document pieces" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _check_encodable(aligner, np.array([[3, 4, EOS] * 3] * 2))
    assert caplog.text == ""
