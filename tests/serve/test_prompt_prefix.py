"""The chat template's fixed beginning in token ids: the common start of rendered one-message chats, cut where the
user's text could merge with the template's tokens; SmolLM2's default system prompt, as transformers tokenizes
it; explicit prefixes and turning reuse off."""

import logging
import os

from textbooks.serve.prompt_prefix import MIN_TEMPLATE_PREFIX, common_prefix, prompt_prefixes, template_prefix

HEAD = "<sys>You are a helpful assistant, careful and brief.</sys><user>"


class _Vocabulary:
    """A chat template that writes HEAD, the user's text, then the generation prompt."""

    chat_template = "HEAD {content} TAIL"

    def __init__(self, fail: bool = False):
        self.fail = fail

    def render_chat(self, messages, *, add_generation_prompt):
        if self.fail:
            raise ValueError("this template needs a system message")
        assert add_generation_prompt and [m["role"] for m in messages] == ["user"]
        return HEAD + messages[0]["content"] + "</user><assistant>"


def _encode(text: str) -> list[int]:
    """Characters as ids, but '>' followed by a space or a newline is one token (a merge across the boundary)."""
    ids, i = [], 0
    while i < len(text):
        if text[i] == ">" and text[i + 1:i + 2] in (" ", "\n"):
            ids.append(1000 + ord(text[i + 1]))
            i += 2
        else:
            ids.append(ord(text[i]))
            i += 1
    return ids


def test_common_prefix():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == [1, 2]
    assert common_prefix([[1, 2], [1, 2, 3]]) == [1, 2] and common_prefix([[4, 5]]) == [4, 5]
    assert common_prefix([]) == [] and common_prefix([[1], [2]]) == []


def test_the_prefix_stops_where_the_users_text_could_merge_with_the_template():
    found = template_prefix(_Vocabulary(), _encode)
    # The template's last '>' merges with a user text starting with a space or a newline: it is left out.
    assert found == _encode(HEAD)[:-1] and len(found) == len(HEAD) - 1
    assert prompt_prefixes(_Vocabulary(), _encode) == [found]  # long enough to be worth its programs
    assert len(found) >= MIN_TEMPLATE_PREFIX


def test_explicit_prefixes_no_template_and_a_failing_template(caplog):
    assert prompt_prefixes(_Vocabulary(), _encode, ["ab", "", "c"]) == [[97, 98], [99]]
    assert prompt_prefixes(_Vocabulary(), _encode, []) == []  # off
    plain = type("Plain", (), {"chat_template": None})()
    assert template_prefix(plain, _encode) == [] and prompt_prefixes(plain, _encode) == []
    with caplog.at_level(logging.WARNING, logger="textbooks.serve.prompt_prefix"):
        assert prompt_prefixes(_Vocabulary(fail=True), _encode) == []
    assert "needs a system message" in caplog.text


def test_smollm2_prefix_is_its_default_system_prompt_as_transformers_tokenizes_it():
    from transformers import AutoTokenizer

    from textbooks.data_packages import resolve_checkpoint
    from textbooks.vocab.registry import get_vocabulary

    path = resolve_checkpoint("smollm2-135m-instruct")
    vocabulary = get_vocabulary(f"gguf:{path}")
    reference = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    found = template_prefix(vocabulary, lambda text: [int(t) for t in vocabulary.encode(text)])
    assert reference.decode(found) == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                                       "Hugging Face<|im_end|>\n<|im_start|>user\n")

    def ids(messages):
        text = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return reference(text, add_special_tokens=False)["input_ids"]

    for content in ("Hi", "What is the capital of France?", "\nindented", " x"):
        assert ids([{"role": "user", "content": content}])[:len(found)] == found, content
    # A text starting with two newlines merges the template's last one into a longer newline token: such a
    # prompt does not start with the prefix's ids (admissions check; it prefills whole).
    assert ids([{"role": "user", "content": "\n\nindented"}])[:len(found)] != found
    with_system = ids([{"role": "system", "content": "You are a concise writer."}, {"role": "user", "content": "Hi"}])
    assert with_system[:len(found)] != found
