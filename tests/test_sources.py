"""seqio, TFDS and ArrayRecord (grain) sources feed the same token cache as text files.

Everything is built locally from files the test writes: no network.
"""

import json
import sys

import numpy as np
import pytest

from salt_jax.config import base_config
from salt_jax.data import sources, store, tokenizer
from salt_jax.errors import UserError

TRAIN = [f"def f{i}(x):  # document {i} \u00e9\u00e8 " + "x * 2 + 1 " * (i % 5 + 1) for i in range(40)]
HELDOUT = [f"held out line {i} " * 3 for i in range(8)]


def _cfg(tmp_path, source, **kw):
    c = base_config().data
    c.source, c.cache_dir, c.seq_len = source, str(tmp_path / "cache"), 16
    for k, v in kw.items():
        c[k] = v
    return c


def _train_stream(cfg):
    cache, _ = store.build_store(cfg)
    return cache.train.tokens(), cache.heldout.tokens()


def _documents(stream):
    """The sorted token sequences of the EOS-terminated documents of a stream."""
    cuts = np.flatnonzero(np.asarray(stream) == tokenizer.EOS_ID)
    return sorted(tuple(x) for x in np.split(np.asarray(stream, np.int64), cuts + 1) if len(x))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The byte-token streams of TRAIN / HELDOUT, each document followed by EOS."""
    tok = tokenizer.ByteTokenizer()
    join = lambda docs: np.concatenate([np.array(ids + [tok.eos_id]) for ids in tok.encode(docs)])  # noqa: E731
    return join(TRAIN), join(HELDOUT)


def test_tfds_dataset_by_name_from_a_local_data_dir(tmp_path, reference):
    import tensorflow_datasets as tfds

    class SaltTinyTexts(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "id": tfds.features.Scalar(dtype=np.int64)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(TRAIN), "validation": self._generate_examples(HELDOUT)}

        def _generate_examples(self, docs):
            for i, d in enumerate(docs):
                yield i, {"text": d, "id": i}

    data_dir = str(tmp_path / "tfds")
    SaltTinyTexts(data_dir=data_dir).download_and_prepare()
    train, heldout = _train_stream(_cfg(tmp_path, "tfds", tfds_name="salt_tiny_texts", tfds_data_dir=data_dir))
    # TFDS stores examples in the order of their hashed keys: same documents, same tokens, another order
    assert _documents(train) == _documents(reference[0])
    assert _documents(heldout) == _documents(reference[1])
    with pytest.raises(UserError, match="config.data.tfds_name='no_such_dataset_xyz': no such TFDS dataset"):
        sources.make_source(_cfg(tmp_path, "tfds", tfds_name="no_such_dataset_xyz", tfds_data_dir=data_dir))
    with pytest.raises(UserError, match="heldout_split='test'"):
        sources.make_source(_cfg(tmp_path, "tfds", tfds_name="salt_tiny_texts", tfds_data_dir=data_dir,
                                heldout_split="test"))


def test_seqio_textline_task(tmp_path, reference):
    import seqio

    (tmp_path / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(HELDOUT) + "\n")
    module = tmp_path / "salt_test_tasks.py"
    module.write_text(
        "import seqio\n"
        "seqio.TaskRegistry.add('salt_test_textlines', source=seqio.TextLineDataSource("
        f"{{'train': {str(tmp_path / 'train.txt')!r}, 'validation': {str(tmp_path / 'valid.txt')!r}}}),"
        " output_features={'text': seqio.Feature(seqio.ByteVocabulary())})\n")
    sys.path.insert(0, str(tmp_path))
    try:
        cfg = _cfg(tmp_path, "seqio", seqio_task="salt_test_textlines", seqio_module="salt_test_tasks")
        train, heldout = _train_stream(cfg)
    finally:
        sys.path.remove(str(tmp_path))
        seqio.TaskRegistry.remove("salt_test_textlines")
    np.testing.assert_array_equal(train, reference[0])
    np.testing.assert_array_equal(heldout, reference[1])
    with pytest.raises(UserError, match="config.data.seqio_task='nope'"):
        sources.make_source(_cfg(tmp_path, "seqio", seqio_task="nope"))


def test_arrayrecord_files_through_grain(tmp_path, reference):
    from array_record.python.array_record_module import ArrayRecordWriter

    def write(path, docs, as_json):
        w = ArrayRecordWriter(str(path), "group_size:1")
        for d in docs:
            w.write(json.dumps({"text": d}).encode() if as_json else d.encode())
        w.close()

    write(tmp_path / "train.array_record", TRAIN, as_json=False)
    write(tmp_path / "valid.array_record", HELDOUT, as_json=True)
    cfg = _cfg(tmp_path, "arrayrecord", path=str(tmp_path / "train.array_record"),
               heldout_path=str(tmp_path / "valid.array_record"))
    train, heldout = _train_stream(cfg)
    np.testing.assert_array_equal(train, reference[0])
    np.testing.assert_array_equal(heldout, reference[1])
    # a record without the text field, or not UTF-8, is skipped and counted; a file of them is a wrong text_field
    w = ArrayRecordWriter(str(tmp_path / "gaps.array_record"), "group_size:1")
    for record in [b'{"body": "x"}', json.dumps({"text": TRAIN[0]}).encode(), b'{"id": 3}', b"\xff\xfe",
                   TRAIN[1].encode()]:
        w.write(record)
    w.close()
    gaps = _cfg(tmp_path, "arrayrecord", path=str(tmp_path / "gaps.array_record"),
                heldout_path=str(tmp_path / "valid.array_record"))
    built, _ = store.build_store(gaps)
    assert built.meta["splits"]["train"]["documents"] == 2
    assert built.meta["splits"]["train"]["skipped"] == dict(undecodable=1, empty=0, not_text=0, no_field=2,
                                                            not_json=0)
    gaps.text_field = "content"  # (the bare-text record of the train file is text whatever the field)
    with pytest.raises(UserError, match=r"config.data.text_field='content': none of its 8 examples has it \(the "
                                        r"first one's fields: text\); set text_field to the one holding the text"):
        store.build_store(gaps)
    (tmp_path / "bad.array_record").write_bytes(b"not an array record file")
    with pytest.raises(UserError, match="bad.array_record: not a readable ArrayRecord"):
        store.build_store(_cfg(tmp_path, "arrayrecord", path=str(tmp_path / "bad.array_record"),
                              heldout_path=str(tmp_path / "valid.array_record")))


def test_jsonl_text_source_gives_the_same_tokens(tmp_path, reference):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in TRAIN))
    src = sources.make_source(_cfg(tmp_path, "text", path=str(tmp_path / "train"), heldout_fraction=0.2))
    tok = tokenizer.ByteTokenizer()
    docs = list(src.documents("train")) + list(src.documents("heldout"))  # records are split one by one
    ids = np.concatenate([np.array(x + [tok.eos_id]) for x in tok.encode(docs)])
    assert _documents(ids) == _documents(reference[0])


def test_seqio_sentencepiece_vocabulary_is_interchangeable_with_ours(tmp_path):
    import seqio

    for i in range(4):
        (tmp_path / f"m{i}.py").write_text("\n".join(TRAIN) * 3)
    cfg = _cfg(tmp_path, "text", path=str(tmp_path / "*.py"))
    cfg.tokenizer.kind, cfg.tokenizer.vocab_size = "sentencepiece", 300
    ours = tokenizer.make_tokenizer(cfg.tokenizer, sources.make_source(cfg), cfg.cache_dir)
    theirs = seqio.SentencePieceVocabulary(ours.model_file)
    text = TRAIN[3] + "\n  indented\n"
    assert list(theirs.encode(text)) == ours.encode([text])[0]
    assert theirs.decode(ours.encode([text])[0]) == ours.decode(ours.encode([text])[0])
    # and a seqio vocabulary's model file works as ours (config.data.tokenizer.model_file)
    cfg.tokenizer.model_file = theirs.sentencepiece_model_file if hasattr(theirs, "sentencepiece_model_file") \
        else ours.model_file
    again = tokenizer.make_tokenizer(cfg.tokenizer, None, cfg.cache_dir)
    assert again.encode([text]) == ours.encode([text])
