"""Hugging Face interop: read HF model directories, import them as salt_jax checkpoints, export runs.

- files.py: a directory's config.json, safetensors and tokenizer files
- tensors.py: tensor rules: HF tensor <-> salt_jax parameter, both directions
- families.py: per family (Llama, Qwen2/3, Gemma 2/3, GPT-2): config.json <-> model config
- convert.py: import (streamed onto the mesh) and export (sharded safetensors)
- source.py: where a teacher comes from, resolved once: an HF directory or a salt_jax checkpoint
- tokenizer.py: a run's tokenizer as Hugging Face files (tokenizer.json from SentencePiece or bytes)
- __main__.py: python -m salt_jax.hf import|export

Imports: salt_jax.errors, salt_jax.paths, salt_jax.cli, salt_jax.data, salt_jax.model

Never salt_jax.kd or salt_jax.train (an HF teacher is loaded by salt_jax.kd.teacher through
convert.load_params).
No torch or transformers: safetensors and tokenizers are imported where used.
"""
