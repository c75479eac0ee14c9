"""LLM judge: educational-value labels (0–5, additive rubric) from an OpenAI-compatible teacher model.

As FineWeb-Edu and phi-1 did, a teacher model reads each document with a rubric that adds one point per
criterion met and ends with ``Educational score: N``. Rubrics are data files in ``textbooks/curate/prompts/``
(``edu_web`` for prose, ``edu_code`` for code) or any file path; ``{document}`` marks where the (truncated)
document goes. Requests go through :class:`textbooks.serve.client.OpenAIClient` (bounded concurrency,
retries). :func:`parse_score` reads the score robustly from free-form answers; answers without a readable
score, and failed requests, are counted and left without a score (never guessed).

Use :func:`judge_texts` from Python or :class:`JudgeStage` in Beam (it stores ``meta.scores[score_name]`` and
``meta.labels[score_name]`` and can drop documents below ``min_score``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import os
import re
from typing import Sequence

import apache_beam as beam
import gin

from textbooks.curate import stages
from textbooks.serve.client import ClientError, OpenAIClient

STAGE = "judge"
SCORES = "scores"
_NUM = r"(\d+(?:\.\d+)?)"
_EMPH = r"[\s*_`\"']*"  # Markdown emphasis, quotes and spaces around separators.
_SEP = _EMPH + r"(?:is|of|[:=])?" + _EMPH
# Most specific first; within a pattern the last match in the answer wins (the conclusion comes last).
_PATTERNS = [
    re.compile(r"educational\s+(?:value\s+)?score" + _SEP + _NUM, re.I),
    re.compile(r"(?:total|final|overall)\s+(?:score|points?)" + _SEP + _NUM, re.I),
    re.compile(r"\bscore" + _EMPH + r"(?:is|of|[:=])" + _EMPH + _NUM, re.I),
    re.compile(_NUM + r"\s*(?:/\s*5\b|out\s+of\s+5\b)", re.I),
    re.compile(r"(?:award|give|assign)s?\s+(?:it\s+|this\s+(?:extract|snippet|document)\s+)?(?:a\s+)?" + _NUM
               + r"\s+points?", re.I),
]
_LAST_LINE = re.compile(r"^\W*" + _NUM + r"\W*$")


@gin.configurable
@dataclasses.dataclass
class JudgeConfig:
    """The teacher endpoint and rubric.

    Attributes:
        base_url / model / api_key_env: the OpenAI-compatible endpoint (see ``OpenAIClient``).
        rubric: a rubric name in ``textbooks/curate/prompts`` (``edu_web``, ``edu_code``) or a file path.
        use_chat: ``/chat/completions`` (True) or ``/completions``.
        max_chars: documents are cut to this many characters before prompting.
        temperature / max_tokens: sampling.
        concurrency / timeout / max_retries: client limits.
        score_name: key in ``meta.scores`` and ``meta.labels``.
        min_score: with a value, :class:`JudgeStage` drops documents scored below it.
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "teacher"
    api_key_env: str | None = "OPENAI_API_KEY"
    rubric: str = "edu_web"
    use_chat: bool = True
    max_chars: int = 6000
    temperature: float = 0.0
    max_tokens: int = 300
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 4
    score_name: str = "edu_judge"
    min_score: float | None = None


@dataclasses.dataclass
class JudgeResult:
    """One judged document: ``score`` is None when the answer held no readable score or the request failed."""

    score: float | None
    answer: str = ""
    error: str | None = None


def load_rubric(name_or_path: str) -> str:
    """The rubric text for a name in ``textbooks/curate/prompts`` or a file path.

    Raises:
        FileNotFoundError: neither a known rubric nor a file; the message lists the known names.
        ValueError: the rubric has no ``{document}`` placeholder.
    """
    if os.path.isfile(name_or_path):
        with open(name_or_path, encoding="utf-8") as f:
            text = f.read()
    else:
        folder = importlib.resources.files("textbooks.curate.prompts")
        path = folder / f"{name_or_path}.txt"
        if not path.is_file():
            known = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))
            raise FileNotFoundError(f"rubric {name_or_path!r} is neither a file nor one of {known}")
        text = path.read_text(encoding="utf-8")
    if "{document}" not in text:
        raise ValueError(f"rubric {name_or_path!r} has no {{document}} placeholder")
    return text


def build_prompt(text: str, rubric: str, max_chars: int = 6000) -> str:
    """The rubric with the document (cut to ``max_chars``) in place of ``{document}``."""
    doc = text if len(text) <= max_chars else text[:max_chars] + "\n[...]"
    return rubric.replace("{document}", doc)


def parse_score(answer: str, low: float = 0.0, high: float = 5.0) -> float | None:
    """Reads the score from a judge's answer; None when there is no score in ``[low, high]``.

    Tries, in order: ``Educational score: N``, ``total/final score: N``, ``score: N``, ``N/5`` / ``N out of 5``,
    ``award N points``, and a number alone on the last non-empty line. Markdown emphasis is tolerated.
    """
    if not answer:
        return None
    for pattern in _PATTERNS:
        values = [float(m.group(1)) for m in pattern.finditer(answer)]
        values = [v for v in values if low <= v <= high]
        if values:
            return values[-1]
    lines = [ln for ln in answer.strip().splitlines() if ln.strip()]
    if lines:
        m = _LAST_LINE.match(lines[-1].strip())
        if m and low <= float(m.group(1)) <= high:
            return float(m.group(1))
    return None


async def judge_many(texts: Sequence[str], config: JudgeConfig, rubric: str | None = None) -> list[JudgeResult]:
    """Sends every text to the judge concurrently (bounded by the client); failures become results with
    ``error`` set."""
    rubric = rubric if rubric is not None else load_rubric(config.rubric)
    sampling = {"temperature": config.temperature, "max_tokens": config.max_tokens}

    async with OpenAIClient(config.base_url, config.model, api_key_env=config.api_key_env,
                            concurrency=config.concurrency, timeout=config.timeout,
                            max_retries=config.max_retries) as client:

        async def one(text: str) -> JudgeResult:
            prompt = build_prompt(text, rubric, config.max_chars)
            try:
                if config.use_chat:
                    completion = await client.chat([{"role": "user", "content": prompt}], **sampling)
                else:
                    completion = await client.complete(prompt, **sampling)
            except (ClientError, asyncio.TimeoutError, OSError) as e:
                return JudgeResult(None, "", f"{type(e).__name__}: {e}")
            answer = getattr(completion, "text", completion)
            return JudgeResult(parse_score(answer), answer)

        return list(await asyncio.gather(*(one(t) for t in texts)))


def judge_texts(texts: Sequence[str], config: JudgeConfig | None = None) -> list[JudgeResult]:
    """Synchronous :func:`judge_many` (runs its own event loop)."""
    return asyncio.run(judge_many(list(texts), config or JudgeConfig()))


class _JudgeDoFn(beam.DoFn):
    def __init__(self, config: JudgeConfig, stage: str):
        self.config = config
        self.stage = stage

    def setup(self):
        self.rubric = load_rubric(self.config.rubric)
        self.counters = stages.StageCounters(self.stage)

    def process(self, batch: list[dict]):
        results = asyncio.run(judge_many([r["text"] for r in batch], self.config, self.rubric))
        for record, result in zip(batch, results):
            tokens = self.counters.seen(record)
            if result.error is not None:
                self.counters.inc("request_failed")
            elif result.score is None:
                self.counters.inc("unparsed")
            else:
                self.counters.inc("scored")
                record = stages.set_score(record, self.config.score_name, result.score, label=result.score)
                yield beam.pvalue.TaggedOutput(SCORES, (self.config.score_name, result.score))
            low = self.config.min_score is not None and (result.score is None or result.score < self.config.min_score)
            if low:
                reason = "below_min_score" if result.score is not None else "no_score"
                self.counters.dropped(record, reason, tokens)
                yield beam.pvalue.TaggedOutput(stages.DROPPED, stages.mark_dropped(
                        record, self.stage, reason, score=result.score, error=result.error))
            else:
                self.counters.kept(record, tokens)
                yield record


class JudgeStage(beam.PTransform):
    """Beam stage: LLM rubric scores in batches; returns ``kept``, ``dropped`` and ``scores``."""

    def __init__(self, config: JudgeConfig, stage: str = STAGE, batch_size: int = 32):
        super().__init__()
        self.config = config
        self.stage = stage
        self.batch_size = batch_size
        load_rubric(config.rubric)  # Fail at construction on a bad rubric.

    def expand(self, records):
        out = (records
               | "Batch" >> beam.BatchElements(min_batch_size=min(8, self.batch_size),
                                               max_batch_size=self.batch_size)
               | "Judge" >> beam.ParDo(_JudgeDoFn(self.config, self.stage)).with_outputs(
                       stages.DROPPED, SCORES, main="kept"))
        return {"kept": out.kept, "dropped": out[stages.DROPPED], "scores": out[SCORES]}
