"""Chat templates: rendering a conversation to the prompt text a chat model was trained on, with jinja2 set up
as transformers' ``tokenizer.apply_chat_template(messages, tokenize=False)`` sets it up.

A chat template (from a GGUF file's ``tokenizer.chat_template`` or a ``tokenizer_config.json``) is untrusted
code, so it runs in jinja2's immutable sandbox. The environment:

* ``trim_blocks`` and ``lstrip_blocks`` (a block tag swallows its own line's indentation and newline);
* the loop-control extension (``{% break %}``, ``{% continue %}``) and ``{% generation %}...{% endgeneration %}``
  blocks, which render their body (transformers uses them to mark assistant tokens);
* ``raise_exception(message)``: the template refuses the conversation;
* the ``tojson`` filter as ``json.dumps`` with ``ensure_ascii=False`` (no HTML escaping) and the ``indent``,
  ``separators`` and ``sort_keys`` arguments;
* ``strftime_now(format)``: the current local time formatted;
* ``dict(...)`` and ``namespace(...)`` (no underscore-prefixed names, so a template cannot reach Python
  internals).

The template sees ``messages`` (a key whose value is None left out, and a message's ``reasoning_content``,
``thinking`` or ``reasoning`` available under both ``reasoning_content`` and ``thinking``), ``tools``,
``documents``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and any extra keyword.

Every failure of a template (a syntax error, ``raise_exception``, an undefined name used as a value, a sandbox
violation) raises :class:`ChatTemplateError`, a ``ValueError`` whose message says what went wrong.
Compiled templates are cached per template text.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
"""Keys a message's reasoning may come under; templates read ``reasoning_content`` or ``thinking``."""


class ChatTemplateError(ValueError):
    """A chat template cannot be compiled or refuses to render a conversation."""


_TEMPLATE_RUNTIME_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError)


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool, bos_token: str | None,
                eos_token: str | None, tools: list[dict] | None = None, **extra: Any) -> str:
    """Renders ``messages`` with the jinja2 chat ``template`` (see the module docstring).

    Args:
        template: the template text.
        messages: dicts with at least ``role`` and usually ``content`` (strings, numbers, lists and dicts of them).
        add_generation_prompt: end with the header that starts the assistant's reply.
        bos_token, eos_token: the tokenizer's special token strings, which some templates write; None leaves
            the name undefined (it renders as an empty string).
        tools: JSON schemas (dicts) of the functions the model may call, or None.
        **extra: further template variables (e.g. ``documents``, ``pad_token``, ``enable_thinking``).

    Returns:
        The prompt text.

    Raises:
        ChatTemplateError: the template does not compile or fails (message names the reason and line).
        TypeError: a message is not a dict, or a value is not JSON-like.
    """
    compiled = _compile(template)
    plain_messages = []
    for n, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"message {n} must be a dict with 'role' and 'content', got {type(message).__name__}")
        # A key whose value is None counts as absent (APIs send ``"content": None``; templates test presence).
        message = {k: v for k, v in message.items() if v is not None}
        plain_messages.append(_with_reasoning_aliases(_plain(message, f"messages[{n}]")))
    # A missing special token is left undefined (it renders as ''), as transformers leaves it.
    named = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None}
    variables = {k: _plain(v, k) for k, v in {"documents": None, **named, **extra}.items()}
    variables.update(messages=plain_messages, tools=_plain(tools, "tools"), add_generation_prompt=add_generation_prompt)
    try:
        return compiled.render(**variables)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {_describe(e)}") from e
    except _TEMPLATE_RUNTIME_ERRORS as e:  # Python errors of the template's own expressions, e.g. 1 + 'a'
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    if not isinstance(template, str):
        raise TypeError(f"a chat template must be a string, got {type(template).__name__}")
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile: {_describe(e)}") from e


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_SafeDict(),
                       namespace=_SafeNamespace)
    return env


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}body{% endgeneration %}`` renders ``body`` unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _render_body(caller) -> str:
        return caller()


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class _SafeDict:
    """``dict(...)`` and ``dict.fromkeys(...)`` for templates, without exposing the ``dict`` type itself."""

    def __call__(self, *args, **kwargs) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args) -> dict:
        return dict.fromkeys(*args)


class _SafeNamespace(jinja2.utils.Namespace):
    """jinja2's ``namespace`` refusing attribute names that start with an underscore."""

    def __init__(*args, **kwargs):  # ``self`` positional-only, as in jinja2, so ``namespace(self=1)`` works
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r} of a "
                                                  f"namespace (names starting with '_' are refused)")


def _with_reasoning_aliases(message: dict) -> dict:
    reasoning = next((message[k] for k in REASONING_KEYS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain(value: Any, where: str) -> Any:
    """A fresh copy of ``value`` made of JSON-like Python types only, so that a template sees none of the
    caller's objects (nor their methods) and cannot change them."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base, convert in ((str, str.__str__), (int, int.__int__), (float, float.__float__)):
        if isinstance(value, base):  # a subclass (an enum, a numpy float) as its plain base type
            return convert(value)
    if isinstance(value, Mapping):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{n}]") for n, v in enumerate(value)]
    raise TypeError(f"{where}: a chat template takes strings, numbers, booleans, lists and dicts, "
                    f"got {type(value).__name__}")


def _describe(error: jinja2.TemplateError) -> str:
    line = getattr(error, "lineno", None)
    return f"{error.message or type(error).__name__}" + (f" (template line {line})" if line else "")
