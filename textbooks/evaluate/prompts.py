"""Prompt formats: how each benchmark item becomes (context, continuation) requests.

The formats are lm-eval-harness's (the harness the phi-1.5 report used, zero-shot except MMLU at 2 shots):

=============  ======================================================  ==========================
task           context                                                 continuations
=============  ======================================================  ==========================
piqa           ``Question: {goal}\\nAnswer:``                          `` {solution}``
hellaswag      ``{activity}: {ctx_a} {Ctx_b}`` (markup removed)        `` {ending}``
arc_*          ``Question: {question}\\nAnswer:``                      `` {choice}``
boolq          ``{passage}\\nQuestion: {question}?\\nAnswer:``          `` no`` / `` yes``
winogrande     the sentence up to the blank, with each option filled   `` {rest of the sentence}``
openbookqa     ``{question_stem}``                                     `` {choice}``
siqa           ``Q: {context} {question}\\nA:``                         `` {answer}``
mmlu           subject header, dev shots, question with lettered       `` A`` .. `` D``
               options, ``Answer:``
squad          ``Title: ..\\nBackground: ..\\nQuestion: ..\\nAnswer:``     `` {answer}`` (generation)
gsm8k          ``Question: {question}\\nAnswer:``                       `` {worked solution}``
=============  ======================================================  ==========================

HumanEval and MBPP (generation) are completed from :func:`code_prompt`: HumanEval's signature and
docstring, MBPP's problem and first test as a docstring.

:func:`norm_texts` gives the strings lm-eval divides by for ``acc_norm`` (the choice texts without the
leading space); WinoGrande has one shared continuation, so it has no ``acc_norm``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

# Shots per task when not given: the phi-1.5 report's protocol.
DEFAULT_FEWSHOT: dict[str, int] = {"mmlu": 2}
LETTERS = "ABCDEFGHIJ"


class PromptError(ValueError):
    """An item cannot be formatted (the message names the item and the problem)."""


def _mmlu_block(item: Mapping, with_answer: bool) -> str:
    lines = [item["question"].strip()]
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"])]
    text = "\n".join(lines) + "\nAnswer:"
    if with_answer:
        text += " " + LETTERS[item["gold"]]
    return text


def _mmlu_context(item: Mapping, num_fewshot: int) -> str:
    subject = item.get("subject", "").replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    pool = list(item.get("fewshot") or [])
    if num_fewshot > len(pool):
        raise PromptError(f"{item['id']}: {num_fewshot} shots asked, the dev pool has {len(pool)}")
    shots = [_mmlu_block(s, True) for s in pool[:num_fewshot]]  # lm-eval's 'first_n' sampler
    return header + "".join(s + "\n\n" for s in shots) + _mmlu_block(item, False)


def _winogrande(item: Mapping) -> list[tuple[str, str]]:
    sentence = item["question"]
    if "_" not in sentence:
        raise PromptError(f"{item['id']}: WinoGrande sentence has no blank '_': {sentence!r}")
    blank = sentence.index("_")
    rest = " " + sentence[blank + 1:].strip()
    return [(sentence[:blank] + option, rest) for option in item["choices"]]


def context_for(item: Mapping, num_fewshot: int = 0) -> str:
    """The shared context of a multiple-choice or generation item (not WinoGrande)."""
    task = item["task"]
    if num_fewshot and task != "mmlu":
        raise PromptError(f"{item['id']}: task {task!r} has no few-shot pool here; the phi-1.5 protocol "
                          f"evaluates it zero-shot (num_fewshot=0)")
    if task in ("piqa", "arc_easy", "arc_challenge"):
        return f"Question: {item['question']}\nAnswer:"
    if task in ("hellaswag", "openbookqa"):
        return item["question"]
    if task == "boolq":
        return f"{item['passage']}\nQuestion: {item['question']}?\nAnswer:"
    if task == "siqa":
        return f"Q: {item['passage']} {item['question']}\nA:"
    if task == "mmlu":
        return _mmlu_context(item, num_fewshot)
    if task == "squad":
        return f"Title: {item['title']}\nBackground: {item['passage']}\nQuestion: {item['question']}\nAnswer:"
    if task == "gsm8k":
        return f"Question: {item['question']}\nAnswer:"
    raise PromptError(f"{item['id']}: no prompt format for task {task!r}")


def code_prompt(item: Mapping[str, Any]) -> str:
    """The prompt the model completes: HumanEval's signature + docstring; MBPP's problem and first test as a
    docstring (the format of the MBPP paper and of the phi-1 evaluation)."""
    if item["task"] == "humaneval":
        return item["prompt"]
    first = item["meta"]["test_list"][0] if item["meta"].get("test_list") else ""
    return f'"""\n{item["question"].strip()}\n{first}\n"""\n'


def choice_requests(item: Mapping, num_fewshot: int | None = None) -> list[tuple[str, str]]:
    """One (context, continuation) request per choice of a multiple-choice item, in choice order."""
    task = item["task"]
    shots = DEFAULT_FEWSHOT.get(task, 0) if num_fewshot is None else int(num_fewshot)
    if not item.get("choices"):
        raise PromptError(f"{item.get('id')}: item has no choices")
    if task == "winogrande":
        if shots:
            raise PromptError(f"{item['id']}: winogrande is evaluated zero-shot here")
        return _winogrande(item)
    context = context_for(item, shots)
    if task == "mmlu":
        return [(context, " " + LETTERS[i]) for i in range(len(item["choices"]))]
    return [(context, " " + c) for c in item["choices"]]


def norm_texts(item: Mapping) -> list[str] | None:
    """The strings whose lengths normalize ``acc_norm`` (lm-eval's choice strings), or None if undefined."""
    if item["task"] == "winogrande":
        return None
    if item["task"] == "mmlu":
        return [LETTERS[i] for i in range(len(item["choices"]))]
    return list(item["choices"])


_CALC = re.compile(r"<<[^<>]*>>")


def gold_continuation(item: Mapping) -> tuple[str, str]:
    """(context, gold continuation) whose bits per byte measure how well the model knows the answer."""
    task = item["task"]
    if task in ("humaneval", "mbpp"):
        reference = item["reference"].replace("\r\n", "\n")
        return code_prompt(item), reference
    if task == "gsm8k":
        worked = _CALC.sub("", item["rationale"])
        worked = re.sub(r"\n?####\s*(.+)$", r"\nThe answer is \1.", worked.strip())
        return context_for(item), " " + worked
    if task == "squad":
        return context_for(item), " " + item["answer"]
    if item.get("choices") is not None:
        requests = choice_requests(item)
        return requests[item["gold"]]
    raise PromptError(f"{item.get('id')}: no gold continuation for task {task!r}")


def fewshot_for(task: str, overrides: Mapping[str, int] | None = None) -> int:
    """Shots used for ``task`` (overrides first, then the phi-1.5 protocol)."""
    if overrides and task in overrides:
        return int(overrides[task])
    return DEFAULT_FEWSHOT.get(task, 0)

