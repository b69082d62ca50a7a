"""Hugging Face interop against transformers itself (torch CPU, float32), fully offline.

Every model here is a tiny random transformers model built from a config and
saved with save_pretrained; nothing is downloaded. Weights are re-drawn at a
scale where every option matters (softcaps bite, norms are not 1).
Tolerance for logits: 1e-4 absolute and relative (float32 on both sides).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from salt_jax.config import resolved
from salt_jax.errors import UserError
from salt_jax.hf import convert, families
from salt_jax.hf import files as hf_files
from salt_jax.kd import teacher as teacher_lib
from salt_jax.model import sharding
from salt_jax.model.flops import param_count
from salt_jax.model.transformer import Transformer

from conftest import REPO

ATOL = RTOL = 1e-4
SEQ = 12  # longer than the sliding windows (4) below


def _rope(theta):
    return {"rope_type": "default", "rope_theta": theta}


FAMILIES = {
    # GQA, untied, biases on attention and MLP, non-default rope base
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_parameters=_rope(5000.0), tie_word_embeddings=False,
        attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5),
    # SmolLM2-like: tied embeddings, no biases
    "llama_tied": lambda: transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, rope_parameters=_rope(100000.0), tie_word_embeddings=True),
    # q/k/v biases, tied
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_parameters=_rope(20000.0), tie_word_embeddings=True),
    # query/key norms, head_dim != d_model / heads, untied
    "qwen3": lambda: transformers.Qwen3Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rope_parameters=_rope(30000.0),
        tie_word_embeddings=False),
    # softcaps, post norms, (1 + w) norms, GeGLU (tanh), embedding scale, query_pre_attn_scalar, sliding/global layers
    "gemma2": lambda: transformers.Gemma2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rope_parameters=_rope(5000.0),
        query_pre_attn_scalar=12, sliding_window=4, attn_logit_softcapping=1.5, final_logit_softcapping=2.0),
    # query/key norms with (1 + w), local rope base, sliding pattern, untied
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, query_pre_attn_scalar=8, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], tie_word_embeddings=False,
        rope_parameters={"full_attention": _rope(100000.0), "sliding_attention": _rope(500.0)}),
    # LayerNorm, learned positions, biases, plain GELU MLP, fused Conv1D q/k/v, tied
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32, n_inner=48, activation_function="gelu_new",
        bos_token_id=95, eos_token_id=95),
}


def _randomize(model, seed=0):
    """Re-draws every parameter: matrices ~ N(0, 1/fan), norm weights and biases visibly non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise * p.shape[-1] ** -0.5)
            elif "bias" in name or "gemma" in type(model).__name__.lower():
                p.copy_(0.3 * noise)  # biases, and Gemma's (1 + w) norm weights around 0
            else:
                p.copy_(1.0 + 0.3 * noise)
    return model.eval()


def _hf_model(name, directory, seed=0):
    model = AutoModelForCausalLM.from_config(FAMILIES[name](), attn_implementation="eager")
    _randomize(model, seed).save_pretrained(directory)
    return model


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def _jax_logits(cfg, params, tokens):
    return np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(tokens)))


def _tokens(seed=0, vocab=96):
    return np.random.default_rng(seed).integers(0, vocab, (2, SEQ))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Each family saved once: name -> (directory, the torch model)."""
    root = tmp_path_factory.mktemp("hf")
    return {name: (str(root / name), _hf_model(name, str(root / name), seed=i)) for i, name in enumerate(FAMILIES)}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_imported_logits_equal_transformers(hf_dirs, name):
    directory, model = hf_dirs[name]
    cfg, params = convert.load_params(directory)
    tokens = _tokens()
    want = _torch_logits(model, tokens)
    got = _jax_logits(cfg, params, tokens)
    assert np.abs(want).max() > 0.5  # real numbers, not all-near-zero logits
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    counted = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert counted == param_count(cfg) == sum(p.numel() for p in model.parameters())


def test_family_options_are_set(hf_dirs):
    cfgs = {name: families.model_config_from_hf(hf_files.read_hf_config(d)) for name, (d, _) in hf_dirs.items()}
    assert cfgs["llama"].n_kv_heads == 2 and cfgs["llama"].rope_base == 5000.0 and cfgs["llama"].qkv_bias
    assert cfgs["llama_tied"].tie_embeddings and not cfgs["llama"].tie_embeddings
    assert cfgs["qwen2"].qkv_bias and not cfgs["qwen2"].o_bias
    assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].head_dim == 16
    g2 = cfgs["gemma2"]
    assert (g2.norm_plus_one, g2.post_norms, g2.attn_softcap, g2.final_softcap, g2.sliding_window,
            g2.local_layers, g2.activation) == (True, True, 1.5, 2.0, 4, "LG", "gelu_tanh")
    g3 = cfgs["gemma3_text"]
    assert (g3.qk_norm, g3.rope_base, g3.rope_local_base, g3.local_layers) == (True, 1e5, 500.0, "LGL")
    assert (cfgs["gpt2"].norm, cfgs["gpt2"].positions, cfgs["gpt2"].mlp) == ("layer", "learned", "plain")


def test_import_places_parameters_in_their_shardings(hf_dirs):
    import ml_collections
    from jax.sharding import PartitionSpec as P

    directory, model = hf_dirs["qwen3"]
    cfg = families.model_config_from_hf(hf_files.read_hf_config(directory))
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 4, "tensor": 2}))
    boxed = convert._abstract_params(cfg)
    shardings = sharding.shardings_for(boxed, mesh)
    _, params = convert.load_params(directory, cfg, shardings)
    for leaf, want in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        assert leaf.sharding == want
    # stacked q [layers, d_model, heads, head_dim]: d_model over fsdp, heads over tensor
    assert params["layers"]["attn"]["q"].sharding.spec == P(None, "fsdp", "tensor", None)
    tokens = _tokens(1)
    np.testing.assert_allclose(_jax_logits(cfg, params, tokens), _torch_logits(model, tokens), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])
def test_import_export_round_trip_gives_identical_tensors(hf_dirs, tmp_path, name):
    from safetensors.numpy import load_file

    directory, model = hf_dirs[name]
    convert.import_hf(directory, str(tmp_path / "ckpt"))
    convert.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    a, b = load_file(os.path.join(directory, "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(b) <= set(a) and set(a) - set(b) <= {"lm_head.weight"}  # tied heads are not written twice
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    exported = json.load(open(tmp_path / "out" / "config.json"))
    assert exported["model_type"] == json.load(open(os.path.join(directory, "config.json")))["model_type"]
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), attn_implementation="eager").eval()
    tokens = _tokens(5)
    np.testing.assert_allclose(_torch_logits(loaded, tokens), _torch_logits(model, tokens), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- errors

def _copy(directory, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(directory, dst)
    return dst


def test_missing_safetensors_is_a_clear_error(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"][0], tmp_path)
    os.remove(os.path.join(d, "model.safetensors"))
    with pytest.raises(UserError, match=r"no \*\.safetensors files"):
        convert.load_params(d)


def test_unknown_model_type_is_a_clear_error(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"][0], tmp_path)
    conf = json.load(open(os.path.join(d, "config.json")))
    json.dump(dict(conf, model_type="mamba"), open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(UserError, match=r"model_type='mamba' is not supported"):
        convert.load_params(d)


def test_unsupported_option_names_the_field(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"][0], tmp_path)
    conf = json.load(open(os.path.join(d, "config.json")))
    conf["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0}
    json.dump(conf, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(UserError, match=r"rope_parameters.rope_type='yarn' is not supported"):
        convert.load_params(d)


def test_tensor_shape_mismatch_names_the_tensor_and_both_shapes(hf_dirs, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(hf_dirs["llama"][0], tmp_path)
    path = os.path.join(d, "model.safetensors")
    tensors = load_file(path)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((40, 32), np.float32)
    save_file(tensors, path)
    with pytest.raises(UserError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' has shape \(40, 32\), "
                                        r"the config implies \(48, 32\)"):
        convert.load_params(d)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(UserError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        convert.load_params(d)


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "salt_jax.hf", "import", f"--hf_dir={tmp_path / 'nope'}",
                          f"--out={tmp_path / 'o'}"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no such directory" in out.stderr


# ----------------------------------------------------------------------------- a SALT run with an HF teacher

def _train_tokenizer(directory):
    """A byte-level BPE (~280 ids) trained offline on a few standard-library files, saved like a HF tokenizer."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = [open(os.path.join(os.path.dirname(os.__file__), f), encoding="utf-8").read()
             for f in ("os.py", "textwrap.py", "glob.py")]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(directory)
    return fast


def tiny_hf_teacher(directory, seed=7):
    """A tiny Llama (vocab 288 > its tokenizer's 280, 64 positions) with its tokenizer, saved in `directory` as
    save_pretrained writes a model: (the torch model, the fast tokenizer)."""
    fast = _train_tokenizer(directory)
    cfg = transformers.LlamaConfig(vocab_size=288, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   tie_word_embeddings=True, eos_token_id=fast.eos_token_id, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    _randomize(model, seed=seed).save_pretrained(directory)
    return model, fast


@pytest.fixture(scope="module")
def hf_teacher(tmp_path_factory):
    """A tiny Llama teacher with its tokenizer in one directory."""
    directory = str(tmp_path_factory.mktemp("hf_teacher"))
    model, fast = tiny_hf_teacher(directory)
    return directory, model, fast


def test_salt_run_with_an_hf_teacher_then_export(hf_teacher, tiny_config, tmp_path):
    from salt_jax.data import batches as batches_lib
    from salt_jax.data import store
    from salt_jax.train import loop
    from salt_jax.config import set_method
    from salt_jax.train.metrics import read_metrics
    from salt_jax.kd.teacher import load_teacher
    from salt_jax.data.tokenizer import HFTokenizer

    original, torch_teacher, fast = hf_teacher
    directory = str(tmp_path / "teacher")  # a copy, deleted at the end: the run keeps its own tokenizer
    shutil.copytree(original, directory)
    c = tiny_config
    set_method(c, "salt")
    c.salt.teacher, c.salt.kd_steps = directory, 7
    c.salt.teacher_tokenizer = "adopt"  # (auto: the student would keep its bytes and distil across tokenizers)
    workdir = str(tmp_path / "run")
    loop.run(c, workdir)
    assert HFTokenizer(os.path.join(workdir, "tokenizer")).fingerprint() == HFTokenizer(directory).fingerprint()

    # the run tokenized with the teacher's tokenizer and took its vocabulary size (in the resolved config it
    # wrote; the user's config is left as it was)
    written = json.load(open(os.path.join(workdir, "config.json")))
    assert written["data"]["tokenizer"]["kind"] == "hf" and written["data"]["tokenizer"]["hf_dir"] == directory
    assert written["model"]["vocab_size"] == 288 and c.data.tokenizer.kind == "bytes"
    c = resolved(c)  # the config the run trained with
    assert c.to_dict() == {k: v for k, v in written.items() if k in c}
    tok = HFTokenizer(directory)
    assert tok.vocab_size == 280 and tok.eos_id == fast.eos_token_id
    assert tok.encode(["def f(x):\n    return x"]) == [fast("def f(x):\n    return x")["input_ids"]]
    train_lines = [m for m in read_metrics(os.path.join(workdir, "metrics.jsonl")) if m["split"] == "train"]
    weights = [m["kd_weight"] for m in train_lines]
    assert weights[0] > 0 and weights[-1] == 0  # both phases ran
    assert train_lines[0]["teacher_ntp_loss"] > 0

    # the teacher the run used computes transformers' loss on the run's own batch
    cache, _ = store.build_store(c.data)
    tokens = batches_lib.Batches(cache.train, c.data.batch_size, c.data.seed).numpy(0)
    mesh = sharding.make_mesh(c.mesh)
    teacher = load_teacher(c.salt, c.model, tok.fingerprint(), mesh)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = targets != tok.pad_id

    def masked_ce(logits):
        logits = np.asarray(logits, np.float64)
        lp = logits - logits.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        ce = -np.take_along_axis(lp, targets[..., None], -1)[..., 0]
        return (ce * mask).sum() / mask.sum()

    ours = masked_ce(teacher.model.apply({"params": teacher.params}, jnp.asarray(inputs)))
    theirs = masked_ce(_torch_logits(torch_teacher, inputs))
    assert abs(ours - theirs) < 1e-5, (ours, theirs)

    # export the student: transformers loads it, its logits equal salt_jax's, the tokenizer came along
    out = str(tmp_path / "student_hf")
    assert convert.export_hf(workdir, out) == "llama"
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    loaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    from salt_jax.model.checkpoints import resolve_checkpoint

    root, step = resolve_checkpoint(workdir)
    params = convert._restore_params(root, step, c.model)
    want = _jax_logits(c.model, params, inputs[:2, :SEQ])
    np.testing.assert_allclose(_torch_logits(loaded, inputs[:2, :SEQ]), want, atol=ATOL, rtol=RTOL)
    reloaded = transformers.AutoTokenizer.from_pretrained(out)
    assert reloaded("import os")["input_ids"] == tok.encode(["import os"])[0]

    # the teacher directory goes: sampling, evaluation and export read the run's own copy of the tokenizer
    from salt_jax.eval import load, runs

    before = runs.sample(workdir, "def f(x):\n    return", max_tokens=6)
    shutil.rmtree(directory)
    assert runs.sample(workdir, "def f(x):\n    return", max_tokens=6) == before
    kept = load.load(workdir).tokenizer
    texts = ["def f(x):\n    return x", "  héllo\t\t 日本 🎉\n\n"]
    assert kept.fingerprint() == tok.fingerprint() and kept.encode(texts) == tok.encode(texts)
    assert kept.eos_id == tok.eos_id and kept.pad_id == tok.pad_id
    out2 = str(tmp_path / "student_hf_again")
    convert.export_hf(workdir, out2)
    assert transformers.AutoTokenizer.from_pretrained(out2)(texts[1])["input_ids"] == tok.encode(texts[1:])[0]


# ----------------------------------------------------------------------------- an export carries the run's tokenizer

TEXTS = ["def f(x):\n    return x + 1\n", "", " ", "   leading and trailing   ", "a\n\n\n\tb\t\t\tc",
         "        deeply    indented  =  1", "héllo wörld, naïve café", "日本語のテキスト 🎉🐍", "\u00a0\u2028 zero\u200bwidth",
         "</s> <s> <pad> <unk> are text here", "x" * 40 + "1234567890" * 3, "\r\n\r\nwindows\r\n"]


def _stdlib_texts(n):
    names = sorted(f for f in os.listdir(os.path.dirname(os.__file__)) if f.endswith(".py"))[100:100 + n]
    return [open(os.path.join(os.path.dirname(os.__file__), f), encoding="utf-8").read()[:3000] for f in names]


def _same_as(run_tok, hf_tok, texts, same_ids=True):
    for text in texts:
        ids = hf_tok(text)["input_ids"]
        if same_ids:
            assert ids == run_tok.encode([text])[0], text
        assert hf_tok.decode(ids, skip_special_tokens=True) == run_tok.decode(ids) == text, text


def test_export_of_a_sentencepiece_run_carries_a_tokenizer_that_encodes_like_the_run(tiny_config, tmp_path):
    from salt_jax.data.tokenizer import SentencePieceTokenizer
    from salt_jax.train import loop

    c = tiny_config
    c.model.vocab_size = c.data.tokenizer.vocab_size = 400
    c.data.tokenizer.kind, c.data.tokenizer.max_train_lines = "sentencepiece", 3000
    c.train.steps = c.train.checkpoint_every = c.train.heldout_every = c.train.log_every = 2
    workdir = str(tmp_path / "run")
    loop.run(c, workdir)
    run_tok = SentencePieceTokenizer(os.path.join(workdir, "tokenizer", "tokenizer.model"))  # the run's kept copy

    out = str(tmp_path / "hf")
    convert.export_hf(workdir, out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "tokenizer.model"} <= set(os.listdir(out))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    _same_as(run_tok, hf_tok, TEXTS + _stdlib_texts(8))
    exported = json.load(open(os.path.join(out, "config.json")))
    assert (exported["eos_token_id"], exported["pad_token_id"]) == (run_tok.eos_id, run_tok.pad_id)
    assert hf_tok.eos_token_id == run_tok.eos_id and hf_tok.pad_token_id == run_tok.pad_id
    AutoModelForCausalLM.from_pretrained(out)  # (the weights load beside it)


def test_byte_and_unigram_tokenizers_as_hugging_face_files(tmp_path):
    """Bytes export exactly; a Unigram model encodes the same except where two segmentations tie (runs of spaces,
    up to float32 rounding), and always decodes back to the text."""
    from salt_jax.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, train_sentencepiece
    from salt_jax.hf import tokenizer as hf_tokenizer

    for name, tok, texts in (("bytes", ByteTokenizer(), TEXTS), ("unigram", None, [t for t in TEXTS if "  " not in t])):
        if tok is None:
            train_sentencepiece(_stdlib_texts(30), 400, "unigram", 3000, str(tmp_path / "unigram.model"))
            tok = SentencePieceTokenizer(str(tmp_path / "unigram.model"))
        out = tmp_path / name
        out.mkdir()
        assert hf_tokenizer.write(tok, str(out), 128) == {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
        _same_as(tok, hf_tok, texts)
        _same_as(tok, hf_tok, TEXTS + _stdlib_texts(4), same_ids=name == "bytes")


def test_imported_checkpoint_is_a_teacher_and_names_its_tokenizer(hf_teacher, tmp_path, cache_dir):
    import ml_collections

    from salt_jax.config import base_config
    from salt_jax.kd.teacher import load_teacher

    directory, torch_teacher, _ = hf_teacher
    out = subprocess.run([sys.executable, "-m", "salt_jax.hf", "import", f"--hf_dir={directory}",
                          f"--out={tmp_path / 'imported'}"], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr
    c = base_config("test-tiny")
    c.salt.method, c.salt.teacher = "salt", str(tmp_path / "imported")
    teacher_lib.adopt_teacher_vocabulary(c)
    assert c.data.tokenizer.hf_dir == str(tmp_path / "imported" / "hf_tokenizer") and c.model.vocab_size == 288
    from salt_jax.data.tokenizer import HFTokenizer

    tok = HFTokenizer(c.data.tokenizer.hf_dir)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    teacher = load_teacher(c.salt, c.model, tok.fingerprint(), mesh)
    tokens = _tokens(3, vocab=288)
    np.testing.assert_allclose(_jax_logits(teacher.config, teacher.params, tokens),
                               _torch_logits(torch_teacher, tokens), atol=ATOL, rtol=RTOL)
    c.model.vocab_size = 300  # set by the user and different: refused with the number to use
    with pytest.raises(UserError, match=r"config.model.vocab_size=300: .* set config.model.vocab_size=288"):
        teacher_lib.adopt_teacher_vocabulary(c)


def test_sharded_bfloat16_checkpoints_import_and_export(tmp_path):
    """save_pretrained shards (with an index) in bf16 import exactly; export shards and bf16 load in transformers."""
    model = _hf_model("qwen2", str(tmp_path / "f32"), seed=3).to(torch.bfloat16)
    model.save_pretrained(str(tmp_path / "bf16"), max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "bf16" / "model.safetensors.index.json")
    cfg, params = convert.load_params(str(tmp_path / "bf16"))
    want = model.state_dict()["model.layers.1.mlp.down_proj.weight"].float().numpy().T
    np.testing.assert_array_equal(np.asarray(params["layers"]["mlp"]["down"][1]), want)

    convert.import_hf(str(tmp_path / "bf16"), str(tmp_path / "ckpt"))
    convert.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "out"), dtype="bfloat16", shard_bytes=20_000)
    assert os.path.isfile(tmp_path / "out" / "model.safetensors.index.json")
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), attn_implementation="eager")
    ours, theirs = loaded.state_dict(), model.state_dict()
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == torch.bfloat16 and torch.equal(ours[key], theirs[key]), key


def test_import_and_training_path_do_not_load_torch_or_transformers():
    script = ("import sys; import salt_jax.train.loop, salt_jax.hf.convert, salt_jax.main, salt_jax.kd.teacher, salt_jax.data.tokenizer; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_export_of_a_workdir_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"--workdir=.*: no finished checkpoint"):
        convert.export_hf(str(tmp_path), str(tmp_path / "out"))
