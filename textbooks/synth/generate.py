"""The gin-configured ``generate`` entry point: topics -> prompts -> teacher completions -> shards + report.

``textbooks generate --gin_file=synth/code_textbooks.gin --gin.generate.num_samples=1000`` calls
:func:`generate`. Steps, each resumable:

1. topics: load a topic file, or grow a tree from seed subjects with the teacher (saved as
   ``<output_dir>/topics.jsonl`` and reused on rerun);
2. prompts: expand topics x templates x slot vocabularies (x web extracts) deterministically for the seed and
   write the manifest ``<output_dir>/prompts.jsonl`` (a rerun checks it is unchanged);
3. completions: ask the teacher for every prompt not done yet (progress, retries, cache, part files);
4. finalize: post-process and write ``<shards_dir or output_dir>/<role>/`` shards, the rejects and the
   diversity report.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import os
import sys
from typing import Any, Mapping, Sequence

import gin

from textbooks.data import paths, records
from textbooks.data.roles import ROLES
from textbooks.serve import client as client_lib
from textbooks.synth import finalize as finalize_lib
from textbooks.synth import completions, postprocess, prompts, topics
from textbooks.synth import templates as templates_lib
from textbooks.progress import Progress

logger = logging.getLogger(__name__)

PostprocessConfig = gin.external_configurable(postprocess.PostprocessConfig, name="PostprocessConfig",
                                              module="textbooks.synth")


def seed_shard_pattern(source: str) -> str:
    """A seed source as a shard glob: a data role's name (``'web_filtered'``) becomes its train shards under the
    data root (``$TEXTBOOKS_DATA_DIR`` or gin ``data_root.path``); anything else is a glob, ``~`` expanded."""
    if source in ROLES:
        return paths.split_pattern(source, "train")
    return os.path.expanduser(source)


def load_seed_texts(pattern: str, *, max_texts: int = 10_000, max_chars: int = 1500, min_chars: int = 200,
                    seed: int = 0) -> list[prompts.SeedText]:
    """Web extracts for seeded templates from shards: a data role's name (its train shards under the data root)
    or a glob such as ``<data_root>/web_filtered/train-*.jsonl.gz``.

    Takes each document's opening ``max_chars`` characters (cut at a sentence end when possible), skips
    documents shorter than ``min_chars``, and keeps ``max_texts`` of them chosen by a seeded hash of the id.
    """
    def candidates():
        for rec in records.iter_records(seed_shard_pattern(pattern)):
            text = rec.text.strip()
            if len(text) < min_chars:
                continue
            if len(text) > max_chars:
                cut = text[:max_chars]
                end = max(cut.rfind(". "), cut.rfind(".\n"), cut.rfind("? "), cut.rfind("! "))
                text = cut[:end + 1] if end > min_chars else cut
            rank = hashlib.sha1(f"{seed}:{rec.id}".encode()).hexdigest()
            yield rank, prompts.SeedText(id=rec.id, text=text, source=rec.source)

    # A seeded sample of the shards that holds only max_texts extracts in memory however large they are.
    return [s for _, s in heapq.nsmallest(max_texts, candidates(), key=lambda x: x[0])]


async def _topics(output_dir: str, spec: str | None, client: client_lib.OpenAIClient, *, grow: bool | None,
                  topics_per_subject: int, subtopics_per_topic: int, sampling: Mapping[str, Any] | None,
                  progress_interval: float) -> list[topics.Topic]:
    saved = os.path.join(output_dir, "topics.jsonl")
    if os.path.exists(saved):
        return list(topics.TopicTree.load(saved))
    if spec is None:
        return []
    tree = topics.TopicTree.load(spec)
    if grow is None:
        grow = all(len(t.path) == 1 for t in tree)
    if grow:
        progress = Progress(0, "topics", unit="topic", interval=progress_interval)
        tree = await topics.grow_topic_tree(client, tree, topics_per_subject=topics_per_subject,
                                            subtopics_per_topic=subtopics_per_topic, sampling=sampling,
                                            progress=progress)
        progress.close()
        print(f"topic tree: {len(tree)} leaves from {len(tree.subjects)} subjects ({tree.num_rejected} duplicate "
              f"titles rejected)", file=sys.stderr)
    tree.save(saved)
    return list(tree)


@gin.configurable(module="textbooks.synth")
def generate(*, endpoint: str = gin.REQUIRED, model: str = gin.REQUIRED,
             templates: Sequence[str] = ("code_textbook",), topics_file: str | None = "code",
             output_dir: str = gin.REQUIRED, num_samples: int = 100, sampling: Mapping[str, Any] | None = None,
             concurrency: int = 8, seed: int = 0, template_weights: Mapping[str, float] | None = None,
             slot_overrides: Mapping[str, Sequence[str]] | None = None, vocabularies: Sequence[str] = (),
             grow_topics: bool | None = None, topics_per_subject: int = 10, subtopics_per_topic: int = 8,
             topic_sampling: Mapping[str, Any] | None = None, seed_shards: str | None = None,
             max_seed_texts: int = 10_000, seed_max_chars: int = 1500, api_key_env: str | None = "OPENAI_API_KEY",
             require_api_key: bool = False, timeout: float = 120.0, max_retries: int = 6, backoff_base: float = 0.5,
             backoff_max: float = 60.0, stream: bool = False, price_prompt_per_1k: float = 0.0,
             price_completion_per_1k: float = 0.0, cache_path: str | None = None, max_failure_rate: float = 0.5,
             finalize: bool = True, shards_dir: str | None = None, source: str | None = None,
             license: str = "teacher-terms", stand_in: str | None = None, validation_fraction: float = 0.01,
             min_validation_docs: int = 0,
             postprocess_config: postprocess.PostprocessConfig | None = None, progress_interval: float = 10.0,
             client_seed: int | None = None, teacher_info: Mapping[str, Any] | None = None) -> dict:
    """Runs (or resumes) a synthetic-data generation run.

    Args:
        endpoint: OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8000/v1``.
        model: model name at the endpoint.
        templates: template files, folders or built-in names (code_textbook, nlp_textbook, exercises,
            stories, web_seeded).
        topics_file: topic file (JSONL/TXT) or a built-in set ('code', 'world' seed subjects; 'code_topics',
            'world_topics' fixed trees); None when every template is seeded by web extracts.
        output_dir: the run folder (manifest, parts, cache, reports; shards too unless ``shards_dir``).
        num_samples: prompts to generate.
        sampling: sampling fields over each template's defaults (max_tokens, temperature, top_p, stop, ...).
        concurrency: requests in flight.
        seed: prompt-expansion seed (deterministic prompts and ids).
        template_weights: template id -> weight (default equal).
        slot_overrides: vocabulary -> allowed item ids (e.g. ``{'audiences': ['college']}``).
        vocabularies: extra vocabulary files.
        grow_topics: grow the topic tree with the teacher (default: when the file holds bare subjects).
        topics_per_subject, subtopics_per_topic, topic_sampling: topic-tree growth settings.
        seed_shards: web documents for seeded templates: a data role's name (``'web_filtered'``, ``'web_raw'``:
            its train shards under the data root, ``$TEXTBOOKS_DATA_DIR``) or a shard glob.
        max_seed_texts, seed_max_chars: how many extracts, and how long each.
        api_key_env, require_api_key, timeout, max_retries, backoff_base, backoff_max, stream: client settings.
        price_prompt_per_1k, price_completion_per_1k: prices for the cost estimate.
        cache_path: response cache file (default ``<output_dir>/cache.sqlite``; share one across runs).
        max_failure_rate: abort when more than this fraction of attempted prompts fail.
        finalize: write shards and the report after the completions.
        shards_dir, source, license, stand_in, validation_fraction, min_validation_docs: see
            :func:`textbooks.synth.finalize.finalize`.
        postprocess_config: a ``PostprocessConfig`` (gin: ``@PostprocessConfig()``).
        progress_interval: seconds between progress lines when stderr is not a terminal.
        client_seed: seeds the retry jitter (tests).
        teacher_info: what is known about the teacher (e.g. ``{"parameters": ..., "quantization": ...}``);
            recorded in the run info and every role's manifest.

    Returns:
        ``{"run": RunResult dict, "finalize": summary or None, "output_dir": ...}``.

    Raises:
        TemplateError, TopicError: bad template or topic files.
        RunError: manifest mismatch, endpoint unreachable, fatal 4xx, too many failures.
    """
    as_list = lambda x: [x] if isinstance(x, str) else list(x)  # noqa: E731 - gin may bind one string
    template_set = templates_lib.load_templates(as_list(templates), vocabularies=as_list(vocabularies))
    os.makedirs(output_dir, exist_ok=True)
    client = client_lib.OpenAIClient(endpoint, model, api_key_env=api_key_env, require_api_key=require_api_key,
                                     concurrency=concurrency, timeout=timeout, max_retries=max_retries,
                                     backoff_base=backoff_base, backoff_max=backoff_max, stream=stream,
                                     pricing=client_lib.Pricing(price_prompt_per_1k, price_completion_per_1k),
                                     seed=client_seed)

    async def run() -> completions.RunResult:
        async with client:
            needs_topics = any(not t.seeded for t in template_set.templates.values() if t.role != "topics")
            topic_list = await _topics(output_dir, topics_file if needs_topics else None, client, grow=grow_topics,
                                       topics_per_subject=topics_per_subject,
                                       subtopics_per_topic=subtopics_per_topic, sampling=topic_sampling,
                                       progress_interval=progress_interval)
            seeds = load_seed_texts(seed_shard_pattern(seed_shards), max_texts=max_seed_texts, max_chars=seed_max_chars, seed=seed) \
                if seed_shards else []
            specs = prompts.expand_prompts(template_set, topic_list, num_samples=num_samples, seed=seed,
                                           template_weights=template_weights, seed_texts=seeds, sampling=sampling,
                                           slot_overrides=slot_overrides)
            info = {"endpoint": client.base_url, "model": model, "templates": sorted(template_set.templates),
                    "template_files": sorted({t.source_file for t in template_set.templates.values()}),
                    "num_samples": num_samples, "seed": seed, "sampling": dict(sampling or {}),
                    "topics_file": topics_file, "num_topics": len(topic_list), "num_seed_texts": len(seeds),
                    "template_weights": dict(template_weights or {}), "teacher_info": dict(teacher_info or {})}
            specs = completions.write_manifest(output_dir, specs, info)
            cache = completions.ResponseCache(cache_path or os.path.join(output_dir, completions.CACHE))
            progress = Progress(len(specs), "generate", unit="prompt", interval=progress_interval,
                                rate_of="completion_tokens", rate_unit="tok")
            try:
                return await completions.execute(output_dir, client, cache=cache, progress=progress,
                                                 max_failure_rate=max_failure_rate)
            finally:
                cache.close()

    result = asyncio.run(run())
    stats = result.client_stats
    print(f"generated {result.completed} completions ({result.cached} from cache) in {result.elapsed_s:.1f}s; "
          f"{result.done_before} were done before; {result.failed} failed; {result.remaining} remain. "
          f"Tokens: {stats['usage']['prompt_tokens']} prompt + {stats['usage']['completion_tokens']} completion; "
          f"retries {stats['retries']} {stats['retry_reasons'] or ''}; est. cost {stats['cost']:.4f}",
          file=sys.stderr)
    summary = None
    if finalize:
        if result.remaining:
            print(f"{result.remaining} prompts have no completion yet (see {output_dir}/failures.jsonl); rerun the "
                  f"same command to retry them. Finalizing what is done.", file=sys.stderr)
        summary = finalize_lib.finalize(output_dir, shards_dir=shards_dir, source=source, license=license,
                                        stand_in=stand_in, validation_fraction=validation_fraction,
                                        min_validation_docs=min_validation_docs,
                                        config=postprocess_config)
        pp = summary["postprocess"]
        print(f"kept {pp['kept']} of {pp['input']} outputs (rejected: {pp['reasons'] or 'none'}); shards: "
              + ", ".join(f"{r}: {v['dir']}" for r, v in summary["shards"].items()), file=sys.stderr)
    return {"output_dir": output_dir, "run": result.to_dict(), "finalize": summary}
