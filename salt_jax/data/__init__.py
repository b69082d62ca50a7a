"""Data: text sources -> tokenizer -> token store -> step-indexed batches.

- documents.py: the Source base (documents per split, read statistics, the hash split)
- files.py: file sources: the built-in corpus (the Python standard library) and corpus files
- formats.py: corpus file formats by extension: JSON lines (plain, .gz, .zst), Parquet, whole documents
- datasets.py: dataset sources: TFDS, seqio, ArrayRecord, Hugging Face (their libraries imported lazily)
- sources.py: config.data.source -> a Source
- tokenizer.py: byte, SentencePiece and Hugging Face tokenizers
- store.py: the token store: each split tokenized once (in parallel, resumably) into memory-mapped shards
- shard_writer.py: a store task: documents tokenized into one shard file, or a compressed stream into pieces
- mixture.py: several corpora with weights (config.data.mixture): a store each, one tokenizer
- engines.py: where the store's tasks run: processes on this machine (or this process)
- ray_engine.py: ... or Ray tasks, on a local Ray or a cluster (Ray imported only there)
- alignment.py: a student row in a teacher's other tokenization, the two aligned into chunks (cross-tokenizer KD)
- batches.py: the batch of step s as a pure function of (store, seed, s), of a mixture's by weight; the held-out set

Imports: salt_jax.errors, salt_jax.paths

Data is the bottom stage: nothing above errors.py and paths.py.
"""
