"""The model: its definition, layout on a device mesh, size and cost, and saved form.

- transformer.py: the decoder-only Transformer (Llama-style, with the options HF families need)
- attention.py: attention by backend: XLA, cuDNN flash attention, TPU splash, with a fallback
- sharding.py: the device mesh, logical-axis rules, `on_mesh`
- presets.py: named model sizes (and their table: python -m salt_jax.model.presets)
- flops.py: parameters, FLOPs per token, the KD step's FLOP model, MFU
- checkpoints.py: Orbax checkpoints of a state or of parameters, with a JSON record per step

Imports: salt_jax.errors, salt_jax.paths, salt_jax.cli

Nothing from salt_jax.data: the model never needs it.
"""
