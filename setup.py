"""salt_jax: small-model-aided large-model training (SALT) in JAX/Flax."""

from setuptools import find_packages, setup

# Versions verified together on CPython 3.11: the README's "Two commands" install them (and the [test] extra)
# and run the whole test suite on a fresh machine, as .ci/run does.
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "numpy==2.4.6",
    "ml-dtypes==0.6.0",
    "tensorstore==0.1.86",
    "protobuf==7.36.2",
    "sentencepiece==0.2.3",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",  # the experiment report's plots
    "zstandard==0.25.0",  # .jsonl.zst / .json.zst corpora (the Pile), imported only when such a file is read
]
# The data stack: only the TFDS / seqio / grain sources import these, lazily.
DATA = [
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "seqio==0.0.20",
    "clu==0.0.12",
    "pyglove==0.4.5",
    "array-record==0.8.6",
    "grain==0.2.18",
]
# Few-shot evaluation (python -m salt_jax.eval, config.eval): lm-evaluation-harness and the datasets library
# it reads tasks with; no torch. In the core install so the README's main job reports few-shot scores.
EVAL = [
    "lm-eval==0.4.13",
    "datasets==5.2.0",
    "evaluate==0.4.6",
]
HF = [
    "torch==2.13.0",  # exactly this version: the CPU wheel, no CUDA packages
    "transformers==5.23.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "huggingface-hub==2.4.0",
    "accelerate==1.15.0",  # lm-eval's own `hf` model (tests compare our adapter with it)
]
NOTEBOOK = [
    "jupyter==1.1.1",
    "nbconvert==7.17.2",
    "nbclient==0.11.0",
    "ipykernel==7.4.0",
]
LOGGING = ["tensorboard==2.21.0", "tqdm==4.70.1", "rich==15.0.0"]
WANDB = ["wandb==0.31.0"]  # Weights & Biases beside metrics.jsonl (config.logging.wandb), imported only then
# Ray: prepare's and the experiment's --engine=ray (the store's tasks, the experiment's runs as Ray tasks on a
# local Ray or a cluster); imported only then. Ray core only: nothing uses Ray Data.
RAY = ["ray==2.60.0"]
# The docs site (mkdocs.yml): mkdocs build --strict runs in the test suite (tests/test_docs_site.py).
DOCS = ["mkdocs==1.6.1", "mkdocs-material==9.8.1", "mkdocstrings[python]==1.0.8"]
# The TPU compiler: runs on TPU VMs, and on any host compiles for TPU slices (python -m salt_jax.compile).
TPU = ["libtpu==0.0.42.1"]  # the version jax[tpu]==0.10.2 pins

setup(
    name="salt_jax",
    version="0.1.0",
    description="SALT: training a large LM faster with a small LM's help (JAX/Flax).",
    python_requires=">=3.11",
    packages=find_packages(include=["salt_jax", "salt_jax.*"]),
    install_requires=CORE + DATA + EVAL,
    # the offline lm-eval tasks (YAML + JSONL) travel with the package
    package_data={"salt_jax.eval.tasks": ["*.yaml", "data/*.jsonl", "data/*.json"]},
    # The commands (README "Commands"; salt_jax.cli.COMMANDS): each is also `python -m <module>`.
    entry_points={"console_scripts": [
        "salt-train=salt_jax.main:main",
        "salt-experiment=salt_jax.experiment.__main__:main",
        "salt-prepare=salt_jax.prepare:main",
        "salt-teacher-cache=salt_jax.teacher_cache:main",
        "salt-compile=salt_jax.compile:main",
        "salt-eval=salt_jax.eval.__main__:main",
        "salt-sample=salt_jax.sample:main",
        "salt-hf=salt_jax.hf.__main__:main",
        "salt-bench=salt_jax.bench:main",
        "salt-presets=salt_jax.model.presets:main",
    ]},
    extras_require={
        "hf": HF,
        "notebook": NOTEBOOK,
        "logging": LOGGING,
        "wandb": WANDB,
        "tpu": TPU,
        "ray": RAY,
        "docs": DOCS,
        # tests/test_hf.py compares against transformers; tests/test_compile.py compiles for TPU slices;
        # tests/test_docs_site.py builds the docs site
        "test": ["pytest==9.2.0"] + NOTEBOOK + HF + TPU + WANDB + RAY + DOCS,
        "all": HF + NOTEBOOK + LOGGING + TPU + WANDB + RAY + DOCS + ["pytest==9.2.0"],
    },
)
