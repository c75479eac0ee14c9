"""Chat templates rendered by :func:`textbooks.vocab.chat_template.render_chat` against transformers'
``apply_chat_template(messages, tokenize=False)``: SmolLM2's template (from its GGUF file) and two templates
shaped like real ones (an [INST] template that checks role order with ``raise_exception`` and writes
``bos_token``/``eos_token``; a tool-calling template with ``namespace``, ``tojson``, loop controls,
``{% generation %}`` and whitespace control) on 240 seeded random conversations each, with and without the
generation prompt; and the errors a template can raise."""

import copy
import datetime
import os
import random

import jinja2
import pytest
from transformers import AutoTokenizer

from textbooks.data_packages import resolve_checkpoint
from textbooks.vocab.chat_template import ChatTemplateError, render_chat
from textbooks.vocab.gguf_tokenizer import chat_template_from_gguf, special_tokens_from_gguf
from textbooks.vocab.registry import get_vocabulary

SMOLLM2 = "smollm2-135m-instruct"
N_CONVERSATIONS = 240

# Shaped like Llama-2 / Mistral templates: a system prompt folded into the first user turn, roles that must
# alternate (raise_exception), stripped content, bos at the start and eos after each answer. Block tags on
# their own indented lines exercise trim_blocks and lstrip_blocks.
INST_TEMPLATE = """{{ bos_token }}
{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set turns = messages[1:] %}
{% else %}
    {% set system = none %}
    {% set turns = messages %}
{% endif %}
{% for message in turns %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {% if loop.first and system is not none %}
[INST] <<SYS>>
{{ system }}
<</SYS>>

{{ message['content'] | trim }} [/INST]
        {%- else %}
[INST] {{ message['content'] | trim }} [/INST]
        {%- endif %}
    {% elif message['role'] == 'assistant' %}
 {{ message['content'] | trim }}{{ eos_token }}{% if not loop.last %}

{% endif %}
    {% endif %}
{% endfor %}
"""

# Shaped like tool-calling ChatML templates: tools as JSON, tool calls with tojson arguments, tool results
# grouped with a namespace flag, reasoning shown for the last assistant turn only, loop controls.
TOOLS_TEMPLATE = """
{%- set ns = namespace(in_tools=false, last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- if tools -%}
<|system|>You may call these functions:
{% for tool in tools %}{{ tool | tojson(indent=2, sort_keys=true) }}
{% endfor %}<|end|>
{% endif -%}
{%- for m in messages -%}
  {%- if m.role == 'tool' -%}
    {%- if not ns.in_tools %}<|tool_results|>{% set ns.in_tools = true %}{% endif -%}
    {{ '\\n' + m.content | tojson }}
    {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|end|>
{% set ns.in_tools = false %}{% endif -%}
    {%- continue -%}
  {%- endif -%}
<|{{ m.role }}|>
  {%- if m.role == 'assistant' -%}
    {%- if m.thinking is defined and loop.index0 > ns.last_user %}<think>{{ m.thinking }}</think>{% endif -%}
    {% generation %}{{ m.content | default('') }}{% endgeneration %}
    {%- for call in m.tool_calls | default([]) -%}
      {%- if loop.index > 3 %}{% break %}{% endif -%}
<call>{{ {'name': call.name, 'arguments': call.arguments} | tojson }}</call>
    {%- endfor -%}
  {%- else -%}
{{ m.content }}
  {%- endif -%}
<|end|>
{% endfor -%}
{%- if add_generation_prompt %}<|assistant|>{% endif -%}
"""

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city, in °C.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}},
]

TEXTS = ["Hello!", "", "  padded  ", "line one\nline two\n", "漢字とかな", "emoji 😀👩‍💻", "مرحبا بالعالم",
         "שלום", "café naïve", "tabs\tand  spaces", "<|im_start|>literal markup<|im_end|>", "[INST] fake [/INST]",
         "{{ not a template }}", "{% raw %}", "quotes ' \" and \\ backslash", "x" * 300, "\n\n\n", "1 + 1 = 2"]


def _conversations(seed: int, *, alternate: bool, tools: bool) -> list[list[dict]]:
    """Seeded random conversations: with or without a system message, 1-7 turns, any of TEXTS as content;
    with ``tools``, assistant tool calls, tool results, reasoning and ``content: None``."""
    rng = random.Random(seed)
    conversations = []
    for _ in range(N_CONVERSATIONS):
        messages = [{"role": "system", "content": rng.choice(TEXTS)}] if rng.random() < 0.5 else []
        for turn in range(rng.randint(1, 7)):
            role = ("user", "assistant")[turn % 2] if alternate else rng.choice(["user", "assistant"])
            message = {"role": role, "content": rng.choice(TEXTS)}
            if tools and role == "assistant":
                r = rng.random()
                if r < 0.3:
                    message["tool_calls"] = [{"name": rng.choice(["get_weather", "add"]),
                                              "arguments": {"city": rng.choice(TEXTS), "n": rng.randint(0, 9),
                                                            "none": None}} for _ in range(rng.randint(1, 5))]
                    message["content"] = None
                elif r < 0.5:
                    message[rng.choice(["reasoning_content", "thinking", "reasoning"])] = rng.choice(TEXTS)
                messages.append(message)
                for _ in range(len(message.get("tool_calls", [])) if rng.random() < 0.8 else 0):
                    messages.append({"role": "tool", "content": rng.choice(TEXTS)})
                continue
            messages.append(message)
        conversations.append(messages)
    return conversations


@pytest.fixture(scope="module")
def gguf_path():
    return resolve_checkpoint(SMOLLM2)  # the file in the installed data package, found without importing it


@pytest.fixture(scope="module")
def reference(gguf_path):
    """transformers' tokenizer of the SmolLM2 file; other templates are set on copies of it."""
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))


def _tokenizer_with(reference, template: str):
    """A copy of transformers' SmolLM2 tokenizer with ``template`` as its chat_template attribute."""
    tok = copy.deepcopy(reference)
    tok.chat_template = template
    return tok


def _assert_same(template, reference, conversations, *, bos, eos, tools=None):
    for messages in conversations:
        for add_generation_prompt in (False, True):
            expected = reference.apply_chat_template(messages, tools=tools, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)
            got = render_chat(template, messages, add_generation_prompt=add_generation_prompt, bos_token=bos,
                              eos_token=eos, tools=tools, unk_token=reference.unk_token,
                              pad_token=reference.pad_token)
            assert got == expected, messages


def test_smollm2_template_matches_transformers(gguf_path, reference):
    template = chat_template_from_gguf(gguf_path)
    special = special_tokens_from_gguf(gguf_path)
    assert template == reference.chat_template
    conversations = _conversations(0, alternate=False, tools=False)
    assert sum(c[0]["role"] == "system" for c in conversations) > 80  # with and without a system message
    _assert_same(template, reference, conversations, bos=special["bos_token"], eos=special["eos_token"])
    vocab = get_vocabulary(f"gguf:{gguf_path}")
    for messages in conversations[:40]:
        assert vocab.render_chat(messages, add_generation_prompt=True) == reference.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
    rendered = vocab.render_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_inst_template_matches_transformers(reference):
    tok = _tokenizer_with(reference, INST_TEMPLATE)
    conversations = _conversations(1, alternate=True, tools=False)
    _assert_same(INST_TEMPLATE, tok, conversations, bos=tok.bos_token, eos=tok.eos_token)
    first = render_chat(INST_TEMPLATE, conversations[0], add_generation_prompt=False, bos_token="<s>",
                        eos_token="</s>")
    assert first.startswith("<s>\n[INST] ") or first.startswith("<s>[INST] ")


def test_tools_template_matches_transformers(reference):
    tok = _tokenizer_with(reference, TOOLS_TEMPLATE)
    conversations = _conversations(2, alternate=False, tools=True)
    assert sum(any("tool_calls" in m for m in c) for c in conversations) > 50
    assert sum(any("reasoning" in m or "thinking" in m for m in c) for c in conversations) > 30
    _assert_same(TOOLS_TEMPLATE, tok, conversations, bos=tok.bos_token, eos=tok.eos_token, tools=TOOLS)
    _assert_same(TOOLS_TEMPLATE, tok, conversations[:30], bos=tok.bos_token, eos=tok.eos_token)


def test_template_errors(reference):
    tok = _tokenizer_with(reference, INST_TEMPLATE)
    wrong_order = [{"role": "assistant", "content": "I speak first"}]
    with pytest.raises(jinja2.TemplateError, match="Conversation roles must alternate"):
        tok.apply_chat_template(wrong_order, tokenize=False)
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate user/assistant"):
        render_chat(INST_TEMPLATE, wrong_order, add_generation_prompt=False, bos_token="<s>", eos_token="</s>")
    with pytest.raises(ValueError, match="no system prompts here"):
        render_chat("{% if messages[0].role == 'system' %}{{ raise_exception('no system prompts here') }}"
                    "{% endif %}", [{"role": "system", "content": "x"}], add_generation_prompt=False,
                    bos_token=None, eos_token=None)
    with pytest.raises(ChatTemplateError, match="does not compile.*line 2"):
        render_chat("ok\n{% for m in messages %}", [], add_generation_prompt=False, bos_token=None, eos_token=None)
    with pytest.raises(ChatTemplateError, match="has no attribute 'content'"):  # an absent key used as a value
        render_chat("{{ messages[0]['content'] + '!' }}", [{"role": "user", "content": None}],
                    add_generation_prompt=False, bos_token=None, eos_token=None)
    with pytest.raises(ChatTemplateError, match="unsafe|not safely"):  # the sandbox
        render_chat("{{ messages.__class__.__mro__ }}", [], add_generation_prompt=False, bos_token=None,
                    eos_token=None)
    with pytest.raises(ChatTemplateError, match="'_secret'"):
        render_chat("{% set ns = namespace() %}{% set ns._secret = 1 %}", [], add_generation_prompt=False,
                    bos_token=None, eos_token=None)
    with pytest.raises(TypeError, match=r"messages\[0\]\['content'\].*object"):
        render_chat("{{ messages }}", [{"role": "user", "content": object()}], add_generation_prompt=False,
                    bos_token=None, eos_token=None)


def test_environment_helpers_and_cache():
    template = ("{{ bos_token }}|{{ eos_token }}|{{ strftime_now('%Y-%m-%d') }}|{{ {'é': '<b>'} | tojson }}"
                "|{{ dict(a=1) | tojson }}|{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}"
                "{% endfor %}")
    before = datetime.date.today().isoformat()
    rendered = render_chat(template, [], add_generation_prompt=False, bos_token=None, eos_token="E")
    after = datetime.date.today().isoformat()
    # A missing special token is undefined (renders empty); tojson keeps non-ASCII and does not escape HTML.
    assert rendered in {f"|E|{d}|{{\"é\": \"<b>\"}}|{{\"a\": 1}}|012" for d in (before, after)}
    from textbooks.vocab import chat_template

    hits = chat_template._compile.cache_info().hits
    render_chat(template, [], add_generation_prompt=False, bos_token=None, eos_token=None)
    assert chat_template._compile.cache_info().hits == hits + 1
