"""Template files (validation, errors naming file/line/slot) and deterministic prompt expansion."""

import json
import textwrap

import pytest

from textbooks.synth import prompts, templates
from textbooks.synth.topics import Topic

BUILTINS = ["code_textbook", "nlp_textbook", "exercises", "stories", "web_seeded", "topics"]
TOPICS = [Topic("Python", "Loops", "For loops"), Topic("Python", "Loops", "While loops"),
          Topic("Physics", "Motion", "Friction"), Topic("Biology", "Cells")]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_builtin_templates_load_and_render():
    ts = templates.load_templates(BUILTINS)
    assert {"code_textbook.section", "exercises.function", "web_seeded.textbook"} <= set(ts.templates)
    assert {"audiences", "styles", "function_names"} <= set(ts.vocabularies)
    assert len(ts.vocabularies["function_names"]) >= 100
    for t in ts.templates.values():
        values = {s: "X" for s in t.slots}
        out = t.render(values)
        text = out.get("prompt") or out["messages"][-1]["content"]
        assert "{" not in text.replace("{{", "") or "```" in text
        assert t.role in ("code_textbooks", "synthetic_textbooks", "code_exercises", "topics")


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "bad.yaml", """\
        templates:
          - id: a
            prompt: "unterminated
            role: x
        """)
    with pytest.raises(templates.TemplateError, match=r"bad\.yaml:\d+: not valid YAML"):
        templates.load_templates(path)


def test_undeclared_placeholder_names_slot_file_and_line(tmp_path):
    path = _write(tmp_path, "t.yaml", """\
        templates:
          - id: ok
            role: synthetic_textbooks
            slots: {topic: topic}
            prompt: "About {topic}."
          - id: broken
            role: synthetic_textbooks
            slots: {topic: topic}
            prompt: "About {topic} for {audence}."
        """)
    with pytest.raises(templates.TemplateError) as info:
        templates.load_templates(path)
    msg = str(info.value)
    assert "t.yaml:6" in msg and "'broken'" in msg and "{audence}" in msg and "declared: topic" in msg


@pytest.mark.parametrize("body,match", [
    ('slots: {topic: topic, style: styles}\n    prompt: "About {topic}."', "slot 'style' is declared but never used"),
    ('slots: {topic: nowhere}\n    prompt: "About {topic}."', "slot 'topic' draws from unknown source 'nowhere'"),
    ('slots: {topic: topic}\n    prompt: "About {topic} in {\\"json\\": 1}."', "write literal braces as"),
    ('slots: {topic: topic}\n    prompt: "About {topic!r}."', "not a plain slot name"),
    ('slots: {topic: topic}\n    promt: "About {topic}."', "unknown key\\(s\\) promt"),
    ('slots: {topic: topic}\n    format: fax\n    prompt: "{topic}"', "format must be one of"),
    ('slots: {topic: topic}\n    system: "hi"\n    prompt: "{topic}"', "only allowed with format: chat"),
])
def test_template_validation_errors(tmp_path, body, match):
    path = _write(tmp_path, "v.yaml", "templates:\n  - id: t1\n    role: r\n    " + body + "\n")
    with pytest.raises(templates.TemplateError, match=match) as info:
        templates.load_templates(path)
    assert "v.yaml" in str(info.value)


def test_duplicate_ids_and_missing_files(tmp_path):
    a = _write(tmp_path, "a.yaml", 'templates:\n  - {id: same, role: r, prompt: "x"}\n')
    b = _write(tmp_path, "b.json", json.dumps({"templates": [{"id": "same", "role": "r", "prompt": "y"}]}))
    with pytest.raises(templates.TemplateError, match="'same' already defined at .*a.yaml"):
        templates.load_templates([a, b])
    with pytest.raises(templates.TemplateError, match="not found .* built-in: .*code_textbook"):
        templates.load_templates("no_such_templates")


def test_missing_slot_at_render_names_template_file_and_slot():
    t = templates.load_templates("code_textbook")["code_textbook.section"]
    with pytest.raises(templates.TemplateError) as info:
        t.render({"subject": "s", "topic": "t", "subtopic": "u", "audience": "a", "style": "b"})
    assert "code_textbook.yaml" in str(info.value) and "'emphasis'" in str(info.value)


def test_chat_template_and_json_file_with_vocabulary(tmp_path):
    path = _write(tmp_path, "c.json", json.dumps({
        "vocabularies": {"tones": ["playful", {"id": "dry", "text": "dry and precise"}]},
        "templates": [{"id": "c", "role": "synthetic_textbooks", "format": "chat", "system": "Tone: {tone}.",
                       "slots": {"tone": "tones", "topic": "subtopic"}, "prompt": "Teach {topic}; use {{braces}}."}]}))
    ts = templates.load_templates(path)
    assert [v.id for v in ts.vocabularies["tones"]] == ["playful", "dry"]
    specs = prompts.expand_prompts(ts, TOPICS, num_samples=8, seed=3)
    tones = {s.meta["slots"]["tone"] for s in specs}
    assert tones == {"playful", "dry"}
    msgs = specs[0].messages
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("Tone: ")
    assert msgs[1]["content"].endswith("; use {braces}.")


def test_expansion_is_deterministic_and_balanced():
    ts = templates.load_templates(["code_textbook", "exercises", "stories"])
    a = prompts.expand_prompts(ts, TOPICS, num_samples=40, seed=7)
    b = prompts.expand_prompts(ts, TOPICS, num_samples=40, seed=7)
    c = prompts.expand_prompts(ts, TOPICS, num_samples=40, seed=8)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [s.id for s in a] != [s.id for s in c]
    assert len({s.id for s in a}) == 40
    # Topics are used round-robin over a permutation: 40 samples over 4 topics -> 10 each.
    counts = {}
    for s in a:
        counts[s.meta["topic_id"]] = counts.get(s.meta["topic_id"], 0) + 1
    assert sorted(counts.values()) == [10, 10, 10, 10]
    assert len({s.template_id for s in a}) == len(ts.templates)
    ex = [s for s in a if s.template_id == "exercises.function"]
    assert ex and all(s.meta["slots"]["function_name"] in s.prompt for s in ex)
    for s in a:
        assert s.meta["template_id"] == s.template_id and s.meta["expansion_seed"] == 7
        assert s.sampling["seed"] == s.meta["sampling_seed"]
    # A prefix of a longer expansion is the shorter expansion (ids do not depend on num_samples).
    longer = prompts.expand_prompts(ts, TOPICS, num_samples=60, seed=7)
    assert [s.id for s in longer[:40]] == [s.id for s in a]


def test_repeats_weights_overrides_and_seeds():
    ts = templates.load_templates(["stories", "web_seeded"])
    one_topic = [Topic("Weather", "Rain")]
    specs = prompts.expand_prompts(ts, one_topic, num_samples=300, seed=0, template_weights={"stories.common_sense": 1},
                                   slot_overrides={"audiences": ["college"]}, sampling={"max_tokens": 64})
    assert {s.meta["slots"]["audience"] for s in specs} == {"college"}
    assert all(s.sampling["max_tokens"] == 64 and s.sampling["temperature"] == 1.0 for s in specs)
    assert max(s.meta["repeat"] for s in specs) >= 1  # 5 story kinds x 1 audience: combinations repeat
    assert len({s.id for s in specs}) == 300
    with pytest.raises(ValueError, match="need web extracts"):
        prompts.expand_prompts(ts, one_topic, num_samples=3, seed=0)
    seeds = [prompts.SeedText(f"w{i}", f"Extract number {i} about clouds.", "web") for i in range(3)]
    seeded = prompts.expand_prompts(ts.select(["web_seeded.textbook"]), [], num_samples=6, seed=0, seed_texts=seeds)
    assert sorted(s.meta["seed_text_id"] for s in seeded) == ["w0", "w0", "w1", "w1", "w2", "w2"]
    assert all("Extract number" in s.prompt for s in seeded)
    with pytest.raises(ValueError, match="unknown item"):
        prompts.expand_prompts(ts.select(["stories.common_sense"]), one_topic, num_samples=1,
                               slot_overrides={"audiences": ["toddlers"]})
    with pytest.raises(ValueError, match="unknown template"):
        prompts.expand_prompts(ts, one_topic, num_samples=1, template_weights={"nope": 1})
