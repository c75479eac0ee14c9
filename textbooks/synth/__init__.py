"""Synthetic textbooks from a teacher LLM (phi-1 / phi-1.5 / Cosmopedia style).

The pieces, in data-flow order:

* :mod:`~textbooks.synth.topics`: the topic tree (subject -> topic -> subtopic), grown by the teacher from seed
  subjects or loaded from a file, deduplicated (normalized and near-duplicate titles).
* :mod:`~textbooks.synth.templates`: prompt templates and slot vocabularies as YAML/JSON data files
  (``templates/``), validated on load.
* :mod:`~textbooks.synth.prompts`: deterministic expansion topics x templates x audiences x styles (x web
  extracts) into prompts whose ids, template ids and slot values end up in every record's ``meta``.
* :mod:`~textbooks.synth.completions`: resumable runs (prompt manifest, append-only part files, response cache),
  talking to the teacher through :class:`textbooks.serve.client.OpenAIClient`.
* :mod:`~textbooks.synth.postprocess` and :mod:`~textbooks.synth.finalize`: cleanup, filters, exercise checks,
  near-dedup and decontamination, then shards per data role; :mod:`~textbooks.synth.diversity`: the report.
* :mod:`~textbooks.synth.generate`: ``generate``, the gin entry point behind ``textbooks generate`` (named after its
  verb like every verb's entry point; importing the module registers every configurable the synth gin files bind).

A local teacher for our own checkpoints is ``textbooks serve`` (:mod:`textbooks.serve`).

Importing this package is cheap; the submodules load their dependencies when imported. The main classes and
functions are available from the package (``from textbooks.synth import TopicTree``);
``textbooks.synth.generate.generate`` and ``textbooks.synth.finalize.finalize`` live in their modules.
"""

import importlib

_EXPORTS = {
    "load_templates": "templates", "TemplateError": "templates", "TemplateSet": "templates",
    "Topic": "topics", "TopicTree": "topics", "grow_topic_tree": "topics", "parse_list": "topics",
    "expand_prompts": "prompts", "PromptSpec": "prompts", "SeedText": "prompts",
    "diversity_report": "diversity",
    "PostprocessConfig": "postprocess",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
