"""The model: its definition, layout on a device mesh, size and cost, and saved form.

    transformer.py  the decoder-only Transformer (Llama-style, with the options HF families need)
    attention.py    attention by backend: XLA, cuDNN flash attention, TPU splash, with a fallback
    sharding.py     the device mesh, logical-axis rules, `on_mesh`
    presets.py      named model sizes
    flops.py        parameters, FLOPs per token, the KD step's FLOP model, MFU
    checkpoints.py  Orbax checkpoints of a state or of parameters, with a JSON record per step

May import salt_jax.errors only (and salt_jax.data never needs it).
"""
