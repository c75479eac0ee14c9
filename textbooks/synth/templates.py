"""Prompt templates and slot vocabularies as data files (YAML or JSON), loaded with validation.

A template file holds a list of templates and, optionally, vocabularies (lists of slot values)::

    vocabularies:            # optional; merged with the built-in vocabularies.yaml
      tones: [playful, formal]
    templates:
      - id: code_textbook.concept      # unique over all loaded files
        role: code_textbooks           # the data role its outputs feed
        format: completion             # or chat (then `system` may be given)
        slots:                         # placeholder -> where its value comes from
          topic: topic                 # topic-tree fields: subject, topic, subtopic, topic_path
          audience: audiences          # a vocabulary name
          extract: seed_text           # a web extract (seeded templates only)
          n: param                     # passed by the caller (topic-growth prompts)
        prompt: |
          Write a textbook section on {topic} for {audience} ...
        sampling: {max_tokens: 1024, temperature: 0.8}   # defaults; the run's sampling overrides them
        postprocess: {min_chars: 400}                     # per-template filters (see postprocess.py)

Placeholders are ``{name}``; literal braces are written ``{{`` and ``}}``. Every placeholder must be a declared
slot and every declared slot must be used. Errors name the file, the line of the template and the slot.
Vocabulary items are strings or ``{id, text}`` mappings; the ``text`` goes into the prompt and the ``id`` into
each sample's metadata.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import string
from typing import Any, Iterable, Mapping, Sequence

import yaml

BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
BUILTIN_VOCABULARIES = os.path.join(BUILTIN_DIR, "vocabularies.yaml")
# Slot sources filled from the topic tree and the web extracts rather than from a vocabulary.
TOPIC_SOURCES = ("subject", "topic", "subtopic", "topic_path")
SEED_SOURCE = "seed_text"
# Slot source for values the caller passes in directly (e.g. how many subtopics to ask for).
PARAM_SOURCE = "param"
FORMATS = ("completion", "chat")
_TEMPLATE_KEYS = {"id", "role", "format", "description", "slots", "system", "prompt", "sampling", "postprocess"}
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_SLOT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TemplateError(ValueError):
    """A template or vocabulary file is malformed, or a slot is missing; the message says where."""


@dataclasses.dataclass(frozen=True)
class VocabItem:
    """One slot value: ``id`` goes into metadata, ``text`` into the prompt."""

    id: str
    text: str


@dataclasses.dataclass(frozen=True)
class Template:
    """One validated prompt template (see the module docstring for the fields)."""

    id: str
    role: str
    format: str
    prompt: str
    slots: Mapping[str, str]
    system: str | None = None
    description: str = ""
    sampling: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    postprocess: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source_file: str = "<memory>"
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source_file}:{self.line}" if self.line else self.source_file

    @property
    def seeded(self) -> bool:
        """Whether the template takes a web extract (a slot with source ``seed_text``)."""
        return SEED_SOURCE in self.slots.values()

    def render(self, values: Mapping[str, str]) -> dict:
        """Fills the slots.

        Args:
            values: slot name -> text.

        Returns:
            ``{"prompt": str}`` for completion templates, ``{"messages": [...]}`` for chat templates.

        Raises:
            TemplateError: a declared slot has no value (the message names the template, file and slot).
        """
        missing = [s for s in self.slots if s not in values or values[s] is None]
        if missing:
            raise TemplateError(f"{self.where}: template {self.id!r}: no value for slot(s) "
                                f"{', '.join(repr(m) for m in missing)} (sources: "
                                f"{', '.join(f'{m}<-{self.slots[m]}' for m in missing)})")
        filled = {k: str(values[k]) for k in self.slots}
        prompt = self.prompt.format_map(filled)
        if self.format == "completion":
            return {"prompt": prompt}
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system.format_map(filled)})
        messages.append({"role": "user", "content": prompt})
        return {"messages": messages}


@dataclasses.dataclass
class TemplateSet:
    """Templates by id plus the vocabularies their slots draw from."""

    templates: dict[str, Template]
    vocabularies: dict[str, list[VocabItem]]

    def __getitem__(self, template_id: str) -> Template:
        try:
            return self.templates[template_id]
        except KeyError:
            raise KeyError(f"no template {template_id!r}; loaded: {', '.join(sorted(self.templates))}") from None

    def __len__(self) -> int:
        return len(self.templates)

    def select(self, ids: Iterable[str]) -> "TemplateSet":
        """The subset of templates named by ``ids`` (same vocabularies)."""
        return TemplateSet({i: self[i] for i in ids}, self.vocabularies)


def placeholders(text: str, where: str) -> list[str]:
    """The ``{name}`` placeholders of ``text`` in order of appearance.

    Raises:
        TemplateError: a placeholder is not a plain identifier, uses a conversion or format spec, or a brace is
            unbalanced.
    """
    names = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise TemplateError(f"{where}: {e}; write literal braces as '{{{{' and '}}}}'") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not _SLOT_RE.match(field) or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise TemplateError(f"{where}: placeholder {shown!r} is not a plain slot name like {{topic}}; write "
                                f"literal braces as '{{{{' and '}}}}'")
        names.append(field)
    return names


def _read_structured(path: str) -> tuple[Any, dict[int, int]]:
    """Parses a YAML or JSON file; returns the object and, for YAML, the line of each template entry."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise TemplateError(f"cannot read template file {path}: {e.strerror}") from None
    if path.endswith(".json"):
        try:
            return json.loads(text), {}
        except json.JSONDecodeError as e:
            raise TemplateError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    try:
        obj = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise TemplateError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    lines: dict[int, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "templates" and isinstance(value, yaml.SequenceNode):
                lines = {i: item.start_mark.line + 1 for i, item in enumerate(value.value)}
    return obj, lines


def _vocab_items(name: str, items: Any, where: str) -> list[VocabItem]:
    if not isinstance(items, list) or not items:
        raise TemplateError(f"{where}: vocabulary {name!r} must be a non-empty list")
    out, seen = [], set()
    for i, item in enumerate(items):
        if isinstance(item, str):
            text = item.strip()
            vid = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:64] or f"item{i}"
        elif isinstance(item, Mapping) and isinstance(item.get("text"), str):
            text = item["text"].strip()
            vid = str(item.get("id") or re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:64])
        else:
            raise TemplateError(f"{where}: vocabulary {name!r} item {i} must be a string or a mapping with a "
                                f"'text' string, got {item!r:.80}")
        if not text:
            raise TemplateError(f"{where}: vocabulary {name!r} item {i} is empty")
        if vid in seen:
            raise TemplateError(f"{where}: vocabulary {name!r} repeats id {vid!r}")
        seen.add(vid)
        out.append(VocabItem(vid, text))
    return out


def load_vocabularies(path: str) -> dict[str, list[VocabItem]]:
    """Reads a vocabulary file: a mapping name -> list of items, or a ``.txt`` file with one item a line
    (the vocabulary is then named after the file)."""
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            items = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        return {os.path.splitext(os.path.basename(path))[0]: _vocab_items(path, items, path)}
    obj, _ = _read_structured(path)
    if isinstance(obj, Mapping) and "vocabularies" in obj:
        obj = obj["vocabularies"]
    if not isinstance(obj, Mapping):
        raise TemplateError(f"{path}: a vocabulary file must map names to lists")
    return {str(k): _vocab_items(str(k), v, path) for k, v in obj.items()}


def _template(obj: Any, path: str, line: int, index: int) -> Template:
    where = f"{path}:{line}" if line else f"{path} (template #{index})"
    if not isinstance(obj, Mapping):
        raise TemplateError(f"{where}: a template must be a mapping, got {type(obj).__name__}")
    tid = obj.get("id")
    if not isinstance(tid, str) or not _ID_RE.match(tid):
        raise TemplateError(f"{where}: template needs an 'id' of letters, digits and . _ - /, got {tid!r}")
    where = f"{where}: template {tid!r}"
    unknown = sorted(set(obj) - _TEMPLATE_KEYS)
    if unknown:
        raise TemplateError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TEMPLATE_KEYS))}")
    for key in ("role", "prompt"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise TemplateError(f"{where}: missing or empty {key!r}")
    fmt = obj.get("format", "completion")
    if fmt not in FORMATS:
        raise TemplateError(f"{where}: format must be one of {FORMATS}, got {fmt!r}")
    system = obj.get("system")
    if system is not None and (fmt != "chat" or not isinstance(system, str)):
        raise TemplateError(f"{where}: 'system' must be a string and is only allowed with format: chat")
    slots = obj.get("slots") or {}
    if not isinstance(slots, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in slots.items()):
        raise TemplateError(f"{where}: 'slots' must map slot names to sources (strings)")
    for key in ("sampling", "postprocess"):
        if not isinstance(obj.get(key) or {}, Mapping):
            raise TemplateError(f"{where}: {key!r} must be a mapping")
    used = placeholders(obj["prompt"], f"{where}, prompt")
    if system:
        used += placeholders(system, f"{where}, system")
    for name in used:
        if name not in slots:
            raise TemplateError(f"{where}: placeholder {{{name}}} is not a declared slot (declared: "
                                f"{', '.join(sorted(slots)) or 'none'}); add '{name}: <source>' under slots")
    for name in slots:
        if not _SLOT_RE.match(name):
            raise TemplateError(f"{where}: slot name {name!r} is not an identifier")
        if name not in used:
            raise TemplateError(f"{where}: slot {name!r} is declared but never used in the prompt")
    if list(slots.values()).count(SEED_SOURCE) > 1:
        raise TemplateError(f"{where}: at most one slot may take the source {SEED_SOURCE!r}")
    return Template(id=tid, role=obj["role"], format=fmt, prompt=obj["prompt"], slots=dict(slots), system=system,
                    description=str(obj.get("description", "")), sampling=dict(obj.get("sampling") or {}),
                    postprocess=dict(obj.get("postprocess") or {}), source_file=path, line=line)


def _resolve(spec: str) -> list[str]:
    """A file, a folder (all .yaml/.yml/.json in it), a glob, or a built-in name like 'code_textbook'."""
    if os.path.isdir(spec):
        files = sorted(f for ext in ("yaml", "yml", "json") for f in glob.glob(os.path.join(spec, f"*.{ext}")))
        return [f for f in files if os.path.basename(f) != "vocabularies.yaml"]
    if any(c in spec for c in "*?["):
        files = sorted(glob.glob(spec))
        if not files:
            raise TemplateError(f"no template files match {spec!r}")
        return files
    if os.path.isfile(spec):
        return [spec]
    for ext in (".yaml", ".yml", ".json"):
        builtin = os.path.join(BUILTIN_DIR, spec + ext)
        if os.path.isfile(builtin):
            return [builtin]
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(BUILTIN_DIR) if f.endswith((".yaml", ".json")))
    raise TemplateError(f"template file {spec!r} not found (not a path, and not a built-in: {', '.join(names)})")


def load_templates(specs: str | Sequence[str], *, vocabularies: Sequence[str] = (),
                   use_builtin_vocabularies: bool = True) -> TemplateSet:
    """Loads and validates template files and checks every slot source exists.

    Args:
        specs: paths, folders, globs or built-in names (``code_textbook``, ``nlp_textbook``, ``exercises``,
            ``stories``, ``web_seeded``, ``topics``).
        vocabularies: extra vocabulary files (YAML/JSON mapping, or one ``.txt`` per vocabulary).
        use_builtin_vocabularies: start from ``templates/vocabularies.yaml`` and ``function_names.txt``.

    Returns:
        The :class:`TemplateSet`.

    Raises:
        TemplateError: a file is missing or malformed, ids repeat, or a slot names an unknown source.
    """
    files = [f for s in ([specs] if isinstance(specs, str) else list(specs)) for f in _resolve(s)]
    if not files:
        raise TemplateError(f"no template files found in {specs!r}")
    vocab: dict[str, list[VocabItem]] = {}
    if use_builtin_vocabularies:
        vocab.update(load_vocabularies(BUILTIN_VOCABULARIES))
        vocab.update(load_vocabularies(os.path.join(BUILTIN_DIR, "function_names.txt")))
    for v in vocabularies:
        vocab.update(load_vocabularies(v))
    templates: dict[str, Template] = {}
    for path in files:
        obj, lines = _read_structured(path)
        if not isinstance(obj, Mapping) or not isinstance(obj.get("templates"), list):
            raise TemplateError(f"{path}: a template file must be a mapping with a 'templates' list")
        unknown = sorted(set(obj) - {"templates", "vocabularies"})
        if unknown:
            raise TemplateError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: templates, "
                                f"vocabularies")
        if obj.get("vocabularies") is not None:
            if not isinstance(obj["vocabularies"], Mapping):
                raise TemplateError(f"{path}: 'vocabularies' must map names to lists")
            vocab.update({str(k): _vocab_items(str(k), v, path) for k, v in obj["vocabularies"].items()})
        for i, item in enumerate(obj["templates"]):
            t = _template(item, path, lines.get(i, 0), i)
            if t.id in templates:
                raise TemplateError(f"{t.where}: template id {t.id!r} already defined at {templates[t.id].where}")
            templates[t.id] = t
    known = set(vocab) | set(TOPIC_SOURCES) | {SEED_SOURCE, PARAM_SOURCE}
    for t in templates.values():
        for slot, source in t.slots.items():
            if source not in known:
                raise TemplateError(f"{t.where}: template {t.id!r}: slot {slot!r} draws from unknown source "
                                    f"{source!r}; known: {', '.join(sorted(known))}")
    return TemplateSet(templates, vocab)
