"""Dataset hooks of the offline stdlib tasks: `custom_dataset: !function utils.<task>` in each YAML.

lm-eval (0.4.13, ConfigurableTask.download) calls the hook as `fn(**metadata, **dataset_kwargs)` and
uses what it returns as `self.dataset`, indexed by the YAML's test_split / fewshot_split; the hooks
ignore those keyword arguments (lm-eval passes the model arguments, version and config path there)
and return a datasets.DatasetDict built in memory from the JSONL files next to this module, so
nothing is downloaded, cached or written. The files are made by scripts/make_eval_tasks.py.
"""

from __future__ import annotations

import json
import os

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def read_docs(task: str, split: str) -> list[dict]:
    """The documents of `task` ("next_line", "identifier", "line_completion", "perplexity") in `split`."""
    with open(os.path.join(DATA_DIR, f"{task}.{split}.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _dataset(task: str, splits: tuple[str, ...]):
    import datasets  # lm-eval's own dependency; imported here so reading the JSONL needs nothing

    return datasets.DatasetDict({s: datasets.Dataset.from_list(read_docs(task, s)) for s in splits})


def next_line(**_):
    return _dataset("next_line", ("test", "fewshot"))


def identifier(**_):
    return _dataset("identifier", ("test", "fewshot"))


def line_completion(**_):
    return _dataset("line_completion", ("test", "fewshot"))


def perplexity(**_):
    return _dataset("perplexity", ("test",))
