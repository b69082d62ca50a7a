"""Regenerates the offline lm-evaluation-harness tasks' data (salt_jax/eval/tasks/data/) from held-out stdlib files.

    python scripts/make_eval_tasks.py [--out=DIR] [--seed=0]

Only files of the built-in corpus's held-out split are read, chosen exactly as training
chooses them: `FileSource` over `stdlib_root()` with config.data.heldout_fraction=0.05 (a
file is held out when a hash of its path relative to the stdlib root falls below the
fraction, so a file held out at 0.05 is held out at any larger fraction). Skipped: files
that are not UTF-8, huge (> 200 KB), generated (codec tables, Sphinx dumps, token
constants), too small to build a question from, or near-duplicates of a training file
(most of their long lines in one training file: held out by path, not by content). The
rest are split, by size strata, into two disjoint groups: test files (the evaluated
documents) and few-shot files (the examples shown in the prompt), so no few-shot example
comes from a file under test. Everything is drawn from fixed seeds, so the output depends
only on this interpreter's stdlib sources. Writes one JSONL per task and split plus
manifest.json, and prints a summary.
"""

from __future__ import annotations

import argparse
import io
import json
import keyword
import os
import random
import re
import sys
import tokenize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from salt_jax.data.files import FileSource, _stdlib_files, stdlib_root  # noqa: E402

HELDOUT_FRACTION = 0.05  # config.data.heldout_fraction's default (salt_jax/config.py)
DEFAULT_OUT = os.path.join(REPO, "salt_jax", "eval", "tasks", "data")
MAX_FILE_BYTES = 200_000
MIN_NONEMPTY_LINES = 15
NEAR_DUPLICATE = 0.6  # skip a held-out file when this fraction of its long lines is in one training file
GENERATED = re.compile(r"auto-?generated|generated from", re.IGNORECASE)  # in a file's first 2000 characters
CODEC_TABLE = re.compile(r"^decoding_(table|map) = ", re.MULTILINE)  # encodings/*: generated mapping tables
CONTEXT_MAX_CHARS = 300
# docs per (task, split); the perplexity task is zero-shot
SIZES = {"next_line": {"test": 400, "fewshot": 64},
         "identifier": {"test": 400, "fewshot": 64},
         "line_completion": {"test": 150, "fewshot": 32},
         "perplexity": {"test": 40}}
PERPLEXITY_CHARS = 3000
PERPLEXITY_MIN_CHARS = 1000
COMMON_NAMES = {"self", "cls"}  # too predictable to be worth a question


def _usable(line: str) -> bool:
    """A line with no control characters but tabs (no form feeds, carriage returns)."""
    return all(c == "\t" or (c >= " " and c != "\x7f") for c in line)


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _answer_line(line: str, max_len: int = 120) -> bool:
    """A line that can be a right answer or a distractor: usable, 4..max_len characters of text."""
    return _usable(line) and 4 <= len(line.strip()) and len(line.rstrip()) <= max_len


# ---------------------------------------------------------------------------------------------- files


def heldout_files() -> tuple[str, list[tuple[str, str]], dict]:
    """(root, [(rel path, text)] of the usable held-out files, skip counts)."""
    root = stdlib_root()
    source = FileSource("stdlib", root, _stdlib_files(root), HELDOUT_FRACTION)  # the training split, verbatim
    out, skipped = [], {"undecodable": [], "huge": [], "generated": [], "too_small": []}  # + near_duplicate
    for path in source.files["heldout"]:
        rel = os.path.relpath(path, root)
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped["undecodable"].append(rel)
            continue
        if len(raw) > MAX_FILE_BYTES:
            skipped["huge"].append(rel)
        elif GENERATED.search(text[:2000]) or CODEC_TABLE.search(text):
            skipped["generated"].append(rel)
        elif sum(1 for line in text.split("\n") if line.strip()) < MIN_NONEMPTY_LINES:
            skipped["too_small"].append(rel)
        else:
            out.append((rel, text))
    near = near_duplicates(root, source.files["train"], out)
    skipped["near_duplicate"] = [f"{rel} ~ {near[rel]}" for rel, _ in out if rel in near]
    out = [(rel, text) for rel, text in out if rel not in near]
    return root, sorted(out), {"heldout_files": len(source.files["heldout"]), **skipped}


def _long_lines(text: str) -> set[str]:
    return {s for s in (line.strip() for line in text.split("\n")) if len(s) >= 20}


def near_duplicates(root: str, train: list[str], files: list[tuple[str, str]]) -> dict[str, str]:
    """{held-out rel path: training file} for the files most of whose long lines (>= 20 characters, stripped)
    occur in one training file (codec stubs such as encodings/cp949.py ~ johab.py, chunk.py ~ wave.py): held
    out by path but not by content, so they would measure memory of the training set."""
    lines = {rel: _long_lines(text) for rel, text in files}
    wanted = set().union(*lines.values()) if lines else set()
    where: dict[str, set[str]] = {}
    for path in train:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            continue
        for line in _long_lines(text) & wanted:
            where.setdefault(line, set()).add(os.path.relpath(path, root))
    out = {}
    for rel, ls in lines.items():
        counts: dict[str, int] = {}
        for line in ls:
            for f in where.get(line, ()):
                counts[f] = counts.get(f, 0) + 1
        if counts:
            best = min(counts, key=lambda f: (-counts[f], f))
            if counts[best] >= NEAR_DUPLICATE * len(ls):
                out[rel] = best
    return out


def split_groups(files: list[tuple[str, str]], rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """Disjoint test / few-shot groups: files sorted by size in strata of 4, one of each stratum for few-shot."""
    by_size = sorted(files, key=lambda f: (len(f[1]), f[0]))
    groups = {"test": [], "fewshot": []}
    for i in range(0, len(by_size), 4):
        stratum = by_size[i:i + 4]
        pick = rng.randrange(len(stratum)) if len(stratum) == 4 else -1  # a short last stratum: all test
        for j, f in enumerate(stratum):
            groups["fewshot" if j == pick else "test"].append(f)
    return {k: sorted(v) for k, v in groups.items()}


def round_robin(cands: dict[str, list], n: int, rng: random.Random, accept) -> list:
    """Up to n accepted candidates, one per file in turn (files in a seeded order, each file's candidates
    shuffled), so documents spread over the files instead of piling up in the largest."""
    order = sorted(cands)
    rng.shuffle(order)
    iters = []
    for f in order:
        c = list(cands[f])
        rng.shuffle(c)
        iters.append(iter(c))
    picked = []
    while iters and len(picked) < n:
        alive = []
        for it in iters:
            if len(picked) >= n:
                break
            for cand in it:
                doc = accept(cand)
                if doc is not None:
                    picked.append(doc)
                    alive.append(it)
                    break
        iters = alive
    return picked


# ---------------------------------------------------------------------------------------------- tasks


def line_targets(lines: list[str], rng: random.Random, max_len: int) -> list[tuple[int, int]]:
    """(start, target) pairs: a context of lines[start:target] (3-6 lines, first one non-blank, <= 300
    characters, at least two non-blank) directly followed by the non-blank target line."""
    out = []
    for t, line in enumerate(lines):
        if not _answer_line(line, max_len):
            continue
        ks = []
        for k in range(3, 7):
            s = t - k
            if s < 0 or not lines[s].strip():
                continue
            window = lines[s:t]
            if (all(_usable(w) for w in window) and sum(len(w) + 1 for w in window) <= CONTEXT_MAX_CHARS
                    and sum(1 for w in window if w.strip()) >= 2):
                ks.append(k)
        if ks:
            out.append((t - rng.choice(ks), t))
    return out


def next_line_distractors(lines: list[str], start: int, t: int, rng: random.Random) -> list[str] | None:
    """Three other lines of the file: distinct from the answer and each other after stripping, not in the
    context, same indentation as the answer where the file has enough such lines, else the nearest."""
    true = lines[t]
    banned = {true.strip()} | {w.strip() for w in lines[start:t]}
    variants: dict[str, list[str]] = {}
    for line in lines:
        if _answer_line(line) and line.strip() not in banned:
            variants.setdefault(line.strip(), []).append(line.rstrip())
    pool = []
    for key in sorted(variants):
        same = [v for v in variants[key] if _indent(v) == _indent(true)]
        pool.append(same[0] if same else variants[key][0])
    if len(pool) < 3:
        return None
    same = [p for p in pool if _indent(p) == _indent(true)]
    if len(same) >= 3:
        return rng.sample(same, 3)
    rest = [p for p in pool if _indent(p) != _indent(true)]
    rng.shuffle(rest)
    rest.sort(key=lambda p: abs(len(_indent(p)) - len(_indent(true))))  # stable: ties stay shuffled
    return same + rest[:3 - len(same)]


def mc_doc(rel: str, line_no: int, context: str, answer: str, distractors: list[str], rng: random.Random) -> dict:
    choices = [answer] + distractors
    rng.shuffle(choices)
    return {"source": rel, "line": line_no, "context": context, "choices": choices, "gold": choices.index(answer)}


def make_next_line(group, n, rng, seen):
    files = {rel: text.split("\n") for rel, text in group}
    cands = {rel: [(rel, s, t) for s, t in line_targets(lines, rng, 120)] for rel, lines in files.items()}
    used: dict[str, list[int]] = {}

    def accept(cand):
        rel, s, t = cand
        lines = files[rel]
        if any(abs(t - u) < 4 for u in used.get(rel, [])):
            return None
        context, answer = "\n".join(lines[s:t]) + "\n", lines[t].rstrip()
        key = (context.strip(), answer.strip())
        if key in seen:
            return None
        distractors = next_line_distractors(lines, s, t, rng)
        if distractors is None:
            return None
        seen.add(key)
        used.setdefault(rel, []).append(t)
        return mc_doc(rel, t + 1, context, answer, distractors, rng)

    return round_robin(cands, n, rng, accept), used


def make_line_completion(group, n, rng, seen, avoid):
    files = {rel: text.split("\n") for rel, text in group}
    cands = {rel: [(rel, s, t) for s, t in line_targets(lines, rng, 100)] for rel, lines in files.items()}
    used: dict[str, list[int]] = {rel: list(avoid.get(rel, [])) for rel in files}  # not next_line's lines

    def accept(cand):
        rel, s, t = cand
        lines = files[rel]
        if any(abs(t - u) < 4 for u in used[rel]):
            return None
        context, target = "\n".join(lines[s:t]) + "\n", lines[t].rstrip()
        key = (context.strip(), target.strip())
        if key in seen:
            return None
        seen.add(key)
        used[rel].append(t)
        return {"source": rel, "line": t + 1, "context": context, "target": target}

    return round_robin(cands, n, rng, accept)


def name_tokens(text: str) -> list[tuple[str, int, int, bool]] | None:
    """(name, row, col, defined here) of every NAME token that is not a (soft) keyword and has 3+ characters
    (defined here: the name follows `def` or `class`); None when the file does not tokenize."""
    out, prev = [], None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if (tok.type == tokenize.NAME and len(tok.string) >= 3 and not keyword.iskeyword(tok.string)
                    and not keyword.issoftkeyword(tok.string)):
                out.append((tok.string, tok.start[0], tok.start[1], prev in ("def", "class")))
            if tok.type not in (tokenize.NL, tokenize.COMMENT):
                prev = tok.string
    except (tokenize.TokenError, SyntaxError):
        return None
    return out


def make_identifier(group, n, rng, seen):
    files, cands, names = {}, {}, {}
    for rel, text in group:
        toks = name_tokens(text)
        if toks is None:
            continue
        lines = text.split("\n")
        files[rel], names[rel] = lines, sorted({tok[0] for tok in toks})
        if len(names[rel]) < 8:
            continue
        # a name being defined (def f, class C) is a guess, not a completion: only uses are asked for
        cands[rel] = [(rel, name, row - 1, col) for name, row, col, defined in toks
                      if not defined and name not in COMMON_NAMES]
    used: dict[str, set[int]] = {}

    def accept(cand):
        rel, name, r, col = cand
        lines = files[rel]
        if r in used.get(rel, set()) or not _usable(lines[r]):
            return None
        ps = [p for p in range(2, 6) if r - p >= 0 and all(_usable(w) for w in lines[r - p:r])
              and sum(len(w) + 1 for w in lines[r - p:r]) + col <= CONTEXT_MAX_CHARS
              and any(w.strip() for w in lines[r - p:r])]
        if not ps:
            return None
        p = rng.choice(ps)
        context = "\n".join(lines[r - p:r]) + "\n" + lines[r][:col]
        if (context.strip(), name) in seen:
            return None
        others = [x for x in names[rel] if x != name]
        rng.shuffle(others)
        others.sort(key=lambda x: abs(len(x) - len(name)))  # stable: ties stay shuffled
        distractors = rng.sample(others[:8], 3)
        seen.add((context.strip(), name))
        used.setdefault(rel, set()).add(r)
        return mc_doc(rel, r + 1, context, name, distractors, rng)

    return round_robin(cands, n, rng, accept)


def make_perplexity(group, n, rng):
    docs = []
    for rel, text in group:
        if len(text) < PERPLEXITY_MIN_CHARS:
            continue
        if len(text) > PERPLEXITY_CHARS:
            text = text[:text.rindex("\n", 0, PERPLEXITY_CHARS) + 1]
        docs.append({"source": rel, "text": text})
    return sorted(rng.sample(docs, min(n, len(docs))), key=lambda d: d["source"])


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    root, files, skipped = heldout_files()
    groups = split_groups(files, random.Random(a.seed))
    data: dict[str, dict[str, list[dict]]] = {task: {} for task in SIZES}
    # test first, then few-shot with the same `seen` sets: a few-shot doc never repeats a test doc
    seen_mc, seen_gen, seen_id, used = set(), set(), set(), {}
    for i, split in enumerate(("test", "fewshot")):
        group = groups[split]
        data["next_line"][split], used = make_next_line(group, SIZES["next_line"][split],
                                                        random.Random(a.seed * 100 + 10 + i), seen_mc)
        data["line_completion"][split] = make_line_completion(group, SIZES["line_completion"][split],
                                                              random.Random(a.seed * 100 + 20 + i), seen_gen, used)
        data["identifier"][split] = make_identifier(group, SIZES["identifier"][split],
                                                    random.Random(a.seed * 100 + 30 + i), seen_id)
    data["perplexity"]["test"] = make_perplexity(groups["test"], SIZES["perplexity"]["test"],
                                                 random.Random(a.seed * 100 + 40))

    os.makedirs(a.out, exist_ok=True)
    written = {}
    for task, splits in data.items():
        for split, docs in splits.items():
            path = os.path.join(a.out, f"{task}.{split}.jsonl")
            with open(path, "w", encoding="utf-8", newline="\n") as fh:
                for i, doc in enumerate(docs):
                    fh.write(json.dumps({"id": f"{task}/{split}/{i}", **doc}, ensure_ascii=False) + "\n")
            written[f"{task}.{split}.jsonl"] = os.path.getsize(path)
    manifest = {
        "generator": "scripts/make_eval_tasks.py",
        "seed": a.seed,
        "python": sys.version.split()[0],
        "heldout_fraction": HELDOUT_FRACTION,
        "heldout_rule": "salt_jax.data.documents.in_heldout(relpath from stdlib_root(), 0.05)",
        "skipped": skipped,
        "groups": {k: [rel for rel, _ in v] for k, v in groups.items()},
        "docs": {task: {split: len(docs) for split, docs in splits.items()} for task, splits in data.items()},
    }
    with open(os.path.join(a.out, "manifest.json"), "w", encoding="utf-8", newline="\n") as fh:
        json.dump(manifest, fh, indent=1, ensure_ascii=False)
        fh.write("\n")

    print(f"stdlib {root} (Python {manifest['python']}): {skipped['heldout_files']} held-out files at "
          f"heldout_fraction={HELDOUT_FRACTION}")
    for why in ("undecodable", "huge", "generated", "too_small", "near_duplicate"):
        print(f"  skipped {why}: {len(skipped[why])} {' '.join(skipped[why])}")
    print(f"  used {len(files)}: {len(groups['test'])} test files, {len(groups['fewshot'])} few-shot files")
    for task, splits in data.items():
        counts = ", ".join(f"{split} {len(docs)} (from {len({d['source'] for d in docs})} files)"
                           for split, docs in splits.items())
        print(f"  {task}: {counts}")
    print(f"wrote {len(written)} files to {a.out}: {sum(written.values()) / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
