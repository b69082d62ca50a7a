"""Offline lm-evaluation-harness tasks built from held-out files of the built-in corpus (the stdlib).

Four tasks, each a YAML here whose `custom_dataset: !function utils.<task>` hook reads the JSONL
in data/ (made by scripts/make_eval_tasks.py from files held out at heldout_fraction 0.05), so they
run with no network: stdlib_next_line and stdlib_identifier (multiple choice, acc / acc_norm),
stdlib_line_completion (generation, exact_match) and stdlib_perplexity (rolling loglikelihood),
plus the group stdlib_fewshot of the first three. Pass TASKS_DIR to lm-eval as
`TaskManager(include_path=TASKS_DIR)` or `--include_path`. This package imports nothing outside
the standard library (utils.py imports lm-eval's `datasets` lazily).

- utils.py: the dataset hooks the YAMLs name, reading the JSONL in data/

Imports: nothing
"""

import os

TASKS_DIR = os.path.dirname(os.path.abspath(__file__))
OFFLINE_TASKS = ("stdlib_next_line", "stdlib_identifier", "stdlib_line_completion", "stdlib_perplexity")

# The paper judges SALT by a few-shot average over a GPT-3 / PaLM-style suite (world knowledge, reading
# comprehension, commonsense, SuperGLUE, LAMBADA). These are lm-eval's versions of those tasks (our
# reading: the paper's exact list, shots and prompts are not reproduced). They download their data on
# first use; StoryCloze is left out (lm-eval needs its data downloaded by hand). `--tasks=paper_suite`.
PAPER_SUITE = ("lambada_openai", "triviaqa", "nq_open", "webqs", "race", "squadv2", "hellaswag", "winogrande",
               "piqa", "arc_easy", "arc_challenge", "openbookqa", "boolq", "cb", "copa", "multirc", "record", "rte",
               "wic", "wsc")
SUITES = {"paper_suite": PAPER_SUITE, "stdlib_offline": OFFLINE_TASKS}
