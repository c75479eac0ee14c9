"""Prompt expansion: topics x templates x audiences x styles (x web-extract seeds) -> a deterministic list of prompts.

Sample ``i`` of a run takes topic ``order[i % T]`` of a seeded permutation of the topics (so every topic is
used about equally and the first samples already cover many topics), a template drawn by weight, and each
vocabulary slot (audience, style, function name, ...) drawn uniformly with a generator seeded by
``(seed, i)``. A combination drawn twice is kept with a new ``repeat`` index (it gets its own sampling seed,
so the teacher writes a different text). The same inputs and seed always give the same prompts with the
same ids, which is what makes runs resumable.

Every :class:`PromptSpec` carries what is stored in each sample's record ``meta``: template id, slot value ids,
topic path, seed extract id, the sampling seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np

from textbooks.synth import templates as templates_lib
from textbooks.synth.topics import Topic


@dataclasses.dataclass(frozen=True)
class SeedText:
    """A web extract used as a seed (Cosmopedia style): its record id, source and (truncated) text."""

    id: str
    text: str
    source: str = ""


@dataclasses.dataclass
class PromptSpec:
    """One request to the teacher and everything needed to reproduce and describe it.

    ``meta`` goes into the output record; ``postprocess`` holds the template's filter options.
    """

    id: str
    template_id: str
    role: str
    format: str
    sampling: dict
    prompt: str | None = None
    messages: list | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    postprocess: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "template_id": self.template_id, "role": self.role, "format": self.format,
                "sampling": self.sampling, "prompt": self.prompt, "messages": self.messages, "meta": self.meta,
                "postprocess": self.postprocess}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "PromptSpec":
        return cls(id=obj["id"], template_id=obj["template_id"], role=obj["role"], format=obj["format"],
                   sampling=dict(obj.get("sampling") or {}), prompt=obj.get("prompt"), messages=obj.get("messages"),
                   meta=dict(obj.get("meta") or {}), postprocess=dict(obj.get("postprocess") or {}))


def _stable_id(parts: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _draw_index(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(n))


def expand_prompts(template_set: templates_lib.TemplateSet, topics: Sequence[Topic], *, num_samples: int,
                   seed: int = 0, template_weights: Mapping[str, float] | None = None,
                   seed_texts: Sequence[SeedText] = (), sampling: Mapping[str, Any] | None = None,
                   slot_overrides: Mapping[str, Sequence[str]] | None = None) -> list[PromptSpec]:
    """Builds ``num_samples`` prompts.

    Args:
        template_set: the templates to draw from (those with role 'topics' are skipped).
        topics: topic-tree leaves (needed unless every template is seeded).
        num_samples: how many prompts.
        seed: the expansion seed; equal inputs and seeds give equal prompts and ids.
        template_weights: template id -> relative weight (default: equal); ids must be loaded templates.
        seed_texts: web extracts for templates with a ``seed_text`` slot (drawn by a seeded permutation).
        sampling: run-level sampling fields, applied over each template's own defaults.
        slot_overrides: vocabulary name -> allowed item ids (e.g. ``{"audiences": ["college"]}``).

    Returns:
        The prompt specs, in sample order.

    Raises:
        ValueError: no usable template, unknown weights, no topics for topic templates, no seeds for seeded
            templates, or an override naming an unknown item.
        TemplateError: a slot without a value (from :meth:`Template.render`).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    usable = {k: t for k, t in template_set.templates.items() if t.role != "topics"}
    weights = dict(template_weights or {k: 1.0 for k in usable})
    unknown = sorted(set(weights) - set(usable))
    if unknown:
        raise ValueError(f"template_weights name unknown template(s) {', '.join(unknown)}; loaded: "
                         f"{', '.join(sorted(usable))}")
    ids = sorted(k for k, w in weights.items() if w > 0)
    if not ids:
        raise ValueError("no template to expand (all weights are zero or only topic-growth templates are loaded)")
    probs = np.array([weights[k] for k in ids], dtype=np.float64)
    probs /= probs.sum()
    chosen = [usable[k] for k in ids]
    if any(not t.seeded for t in chosen) and not topics:
        raise ValueError("templates that take topics were selected but the topic list is empty")
    if any(t.seeded for t in chosen) and not seed_texts:
        seeded = [t.id for t in chosen if t.seeded]
        raise ValueError(f"template(s) {', '.join(seeded)} need web extracts (seed_texts) but none were given; "
                         f"set generate.seed_shards or drop these templates")
    vocab = dict(template_set.vocabularies)
    for name, allowed in (slot_overrides or {}).items():
        if name not in vocab:
            raise ValueError(f"slot_overrides names unknown vocabulary {name!r}; known: {', '.join(sorted(vocab))}")
        by_id = {v.id: v for v in vocab[name]}
        missing = [a for a in allowed if a not in by_id]
        if missing:
            raise ValueError(f"slot_overrides[{name!r}] names unknown item(s) {missing}; known: {', '.join(by_id)}")
        vocab[name] = [by_id[a] for a in allowed]

    base = np.random.default_rng([seed, 0])
    topic_order = base.permutation(len(topics)) if topics else np.zeros(0, dtype=np.int64)
    seed_order = base.permutation(len(seed_texts)) if seed_texts else np.zeros(0, dtype=np.int64)
    template_draws = base.choice(len(ids), size=num_samples, p=probs)
    run_sampling = dict(sampling or {})
    seen: dict[str, int] = {}
    specs, seeded_count = [], 0
    for i in range(num_samples):
        template = chosen[int(template_draws[i])]
        rng = np.random.default_rng([seed, 1, i])
        values: dict[str, str] = {}
        slot_ids: dict[str, str] = {}
        meta: dict[str, Any] = {"template_id": template.id, "template_file": template.source_file.rsplit("/", 1)[-1]}
        if template.seeded:
            extract = seed_texts[int(seed_order[seeded_count % len(seed_texts)])]
            seeded_count += 1
            meta["seed_text_id"] = extract.id
            meta["seed_source"] = extract.source
        else:
            topic = topics[int(topic_order[i % len(topics)])]
            topic_values = topic.slot_values()
            meta["topic_id"] = topic.id
            meta["topic_path"] = list(topic.path)
        for slot, source in template.slots.items():
            if source in templates_lib.TOPIC_SOURCES:
                values[slot] = topic_values[source]
            elif source == templates_lib.SEED_SOURCE:
                values[slot] = extract.text
            elif source == templates_lib.PARAM_SOURCE:
                raise ValueError(f"{template.where}: template {template.id!r} has a 'param' slot {slot!r}; it "
                                 f"cannot be expanded into generation prompts")
            else:
                item = vocab[source][_draw_index(rng, len(vocab[source]))]
                values[slot] = item.text
                slot_ids[slot] = item.id
        meta["slots"] = slot_ids
        combo = _stable_id({"template": template.id, "topic": meta.get("topic_id"),
                            "seed_text": meta.get("seed_text_id"), "slots": slot_ids})
        repeat = seen.get(combo, 0)
        seen[combo] = repeat + 1
        meta["repeat"] = repeat
        prompt_id = _stable_id({"combo": combo, "repeat": repeat, "expansion_seed": seed})
        sample_seed = int(hashlib.sha1(prompt_id.encode()).hexdigest()[:8], 16) % (2**31 - 1)
        meta["sampling_seed"] = sample_seed
        meta["expansion_seed"] = seed
        rendered = template.render(values)
        params = {**template.sampling, **run_sampling, "seed": sample_seed}
        specs.append(PromptSpec(id=prompt_id, template_id=template.id, role=template.role, format=template.format,
                                sampling=params, prompt=rendered.get("prompt"), messages=rendered.get("messages"),
                                meta=meta, postprocess=dict(template.postprocess)))
    return specs
