"""A tiny Flax model with the spm8k vocabulary, exported with `textbooks convert --to-hf`: transformers'
AutoTokenizer reads the folder with the same ids and decoded text as seqio's SentencePieceVocabulary, and
transformers' generate continues a prompt as our decoder does. A SentencePiece model that cannot be converted
exactly makes AutoTokenizer raise and convert say why."""

import json
import os
import sysconfig

import numpy as np
import pytest
import sentencepiece
from hypothesis import given, settings, strategies as st

from textbooks.cli import main
from textbooks.model import generate, get_preset, param_shapes, save_params
from textbooks.model.vocab_files import save_tokenizer, transformers_note
from textbooks.vocab import spm
from textbooks.vocab.registry import get_vocabulary

STDLIB = sysconfig.get_paths()["stdlib"]
STDLIB_FILES = ["json/decoder.py", "textwrap.py", "heapq.py", "tokenize.py", "string.py", "functools.py",
                "dataclasses.py", "argparse.py"]
SPACE = "\u2581"


def _corpus() -> list[str]:
    """~200 varied texts: standard-library source (whole files and 30-line windows), whitespace runs, unicode
    with and without pieces, control characters, and text that looks like special or byte pieces."""
    texts = []
    for name in STDLIB_FILES:
        with open(os.path.join(STDLIB, name), encoding="utf-8") as f:
            source = f.read()
        texts.append(source)
        lines = source.splitlines(keepends=True)
        texts += ["".join(lines[i:i + 30]) for i in range(0, min(len(lines), 300), 30)]
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 64, 100):
        texts += [" " * n, "x" + " " * n + "y", " " * n + "return x" + " " * n, "\t" * n + "pass\n",
                  "\n" * n, "-" * n + "=" * n, "a" * n]
    texts += [
        "def f(x):\n\tif x:\n        return  x  \n\n\n", "\r\n".join(["line one", "  line two", "", "\tend"]),
        "ünïcödé 😀 текст 中文 한국어 العربية हिन्दी ∑∫√ 🇫🇷 👩‍💻 e\u0301 \u200b \u00a0 \u3000 \ufeff",
        "\x00\x01\x07\x1b[0m\x7f", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 \U0010ffff \ue000", f"a{SPACE}b {SPACE}{SPACE}c{SPACE}",
        "<|endoftext|>", "text <|endoftext|> more <|endoftext|><|endoftext|>", "<pad> <unk> <s> </s> <0x41> <0xFF>",
        "3.14159 1e-10 0xDEADBEEF 1_000_000 123456789012345678901234567890",
        "The quick brown fox jumps over the lazy dog. " * 5, "   ", "", "x",
        "    >>> print('hello')\n    hello\n", "``code`` and **bold** -- and ***", "#" * 80 + "\n# title\n",
    ]
    return texts


CORPUS = _corpus()


def _random_params(config, seed: int, scale: float):
    """Random parameters with peaked logits (LayerNorm scales near 1), drawn with numpy."""
    import jax

    rng = np.random.RandomState(seed)

    def draw(path, s):
        x = rng.standard_normal(s.shape).astype(np.float32) * np.float32(scale)
        name = jax.tree_util.keystr(path)
        return x + np.float32(1.0) if "layernorm" in name and "scale" in name else x

    return jax.tree_util.tree_map_with_path(draw, param_shapes(config))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder, config, params): the smallest CPU preset with spm8k's 8,192 rows, exported via the CLI."""
    root = tmp_path_factory.mktemp("spm_export")
    config = get_preset("phi-cpu-1m")
    assert config.vocab_size == 8192
    params = _random_params(config, seed=3, scale=0.3)
    save_params(params, config, str(root / "params"), vocabulary="spm8k")
    assert main(["convert", "--to-hf", "--checkpoint", str(root / "params"), "--out", str(root / "hf")]) == 0
    return str(root / "hf"), config, params


@pytest.fixture(scope="module")
def theirs(exported):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(exported[0])


def test_autotokenizer_is_a_fast_tokenizer_with_our_vocabulary(exported, theirs):
    import transformers

    ours = get_vocabulary("spm8k")
    assert sorted(f for f in os.listdir(exported[0]) if "token" in f or f.endswith(".model")) == [
        "spm.model", "tokenizer.json", "tokenizer_config.json"]
    assert isinstance(theirs, transformers.PreTrainedTokenizerFast)
    assert len(theirs) == ours.vocab_size == 8192
    assert (theirs.pad_token_id, theirs.eos_token_id, theirs.unk_token_id, theirs.bos_token_id) == (
        ours.pad_id, ours.eos_id, ours.unk_id, None) == (spm.PAD_ID, spm.EOS_ID, spm.UNK_ID, None)
    assert theirs.model_max_length == exported[1].max_len


def test_ids_and_decoded_text_equal_ours_on_the_corpus(theirs):
    ours = get_vocabulary("spm8k")
    processor = sentencepiece.SentencePieceProcessor(model_file=spm.spm8k_path())
    assert len(CORPUS) >= 200
    batch = theirs(CORPUS)["input_ids"]  # the batch path, special tokens "added" (none are)
    for text, batched in zip(CORPUS, batch):
        ids = list(ours.encode(text))
        assert ids == processor.encode(text), text[:60]  # seqio adds nothing to the library's ids
        assert theirs.encode(text) == batched == ids, text[:60]
        decoded = theirs.decode(ids)
        assert decoded == ours.decode(ids) == processor.decode(ids), text[:60]
        if SPACE not in text:  # SentencePiece reads a literal U+2581 as a space, both ways
            assert decoded == text
    all_ids = {i for ids in batch for i in ids}
    assert len(all_ids) > 2000 and any(5 <= i <= 260 for i in all_ids)  # many pieces, byte fallback included


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.text(alphabet=" \t\n\r-=#_.:'\"()[]abcdefxyz0123456789é中😀▁<>|", max_size=80))
def test_ids_equal_ours_on_generated_text(theirs, text):
    ours = get_vocabulary("spm8k")
    ids = list(ours.encode(text))
    assert theirs.encode(text) == ids
    assert theirs.decode(ids) == ours.decode(ids)


def _has_valid_char_inside_invalid_byte_run(ids: list[int]) -> bool:
    """Whether some run of byte pieces (ids 5..260 are bytes 0..255) is not UTF-8 yet holds a whole character."""
    runs, current = [], b""
    for i in list(ids) + [-1]:
        if 5 <= i <= 260:
            current += bytes([i - 5])
        elif current:
            runs.append(current)
            current = b""
    for run in runs:
        if run.decode("utf-8", "replace").encode("utf-8") == run:
            continue  # valid UTF-8
        k = 0
        while k < len(run):  # SentencePiece's scan: one character, or one invalid byte, at a time
            n = next((n for n in (1, 2, 3, 4) if _is_one_char(run[k:k + n])), 0)
            if n:
                return True
            k += 1
    return False


def _is_one_char(chunk: bytes) -> bool:
    try:
        return len(chunk.decode("utf-8")) == 1
    except UnicodeDecodeError:
        return False


def test_decode_of_any_ids_equals_ours_except_for_replacement_characters_in_malformed_byte_runs(theirs):
    """Decoding ids a model may sample: identical, except where a run of byte pieces is not UTF-8 but holds a
    whole character; there SentencePiece keeps that character and transformers' ByteFallback decoder gives one
    U+FFFD per byte piece (README, convert)."""
    import random

    ours = get_vocabulary("spm8k")
    rnd = random.Random(0)
    differing = 0
    for _ in range(3000):
        ids = [rnd.choice([rnd.randint(5, 260), rnd.randint(3, 8191)]) for _ in range(rnd.randint(1, 12))]
        if _has_valid_char_inside_invalid_byte_run(ids):
            differing += 1
            continue
        assert theirs.decode(ids) == ours.decode(ids), ids
    assert 0 < differing < 3000
    assert ours.decode([249, 76]) == "\ufffdG" and theirs.decode([249, 76]) == "\ufffd\ufffd"  # bytes f4 47
    assert ours.decode([236, 174]) == theirs.decode([236, 174]) == "\ufffd\ufffd"  # a cut 3-byte character


def test_resaved_tokenizer_keeps_the_ids(theirs, tmp_path):
    import transformers

    theirs.save_pretrained(str(tmp_path))
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = get_vocabulary("spm8k")
    for text in CORPUS[-20:]:
        assert again.encode(text) == list(ours.encode(text)), text


def test_transformers_generate_continues_like_our_decoder(exported, theirs):
    import jax
    import torch
    import transformers

    from textbooks.model import CausalLM

    folder, config, params = exported
    ours = get_vocabulary("spm8k")
    prompt = "def fibonacci(n):\n    "
    prompt_ids = list(ours.encode(prompt))
    steps = 12
    expected = generate(params, config, [prompt_ids], max_new_tokens=steps, eos_id=ours.eos_id)[0]

    # Greedy paths compare only where the top choice is clear of float32 differences between the two
    # implementations: logits are sums over at most intermediate_size terms of magnitude <= max |logit|.
    path = np.asarray([prompt_ids + expected.tokens])
    logits = np.asarray(jax.jit(CausalLM(config).apply)({"params": params}, path))[0]
    chosen = logits[len(prompt_ids) - 1:-1]
    top2 = np.sort(chosen, axis=-1)[:, -2:]
    margin_needed = 8 * np.finfo(np.float32).eps * config.intermediate_size * np.abs(chosen).max()
    assert (top2[:, 1] - top2[:, 0]).min() > margin_needed, "the random model's greedy path is ambiguous"

    model = transformers.PhiForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    inputs = theirs(prompt, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == prompt_ids
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, pad_token_id=theirs.pad_token_id)
    new = out[0, len(prompt_ids):].tolist()
    if expected.finish_reason == "eos":
        assert new == expected.tokens + [ours.eos_id]
    else:
        assert new == expected.tokens and len(new) == steps
    assert theirs.decode(new, skip_special_tokens=True) == ours.decode(expected.tokens)


def _model_with(tmp_path, **normalizer) -> str:
    """spm8k with changed normalizer settings, as a model file."""
    from textbooks.vocab import spm_hf

    with open(spm.spm8k_path(), "rb") as f:
        proto = spm_hf.load_proto(f.read())
    for key, value in normalizer.items():
        setattr(proto.normalizer_spec, key, value)
    path = tmp_path / "changed.model"
    path.write_bytes(proto.SerializeToString())
    return str(path)


def test_a_model_that_cannot_be_converted_makes_autotokenizer_raise(tmp_path, capsys):
    import transformers

    path = _model_with(tmp_path, add_dummy_prefix=True)
    processor = sentencepiece.SentencePieceProcessor(model_file=path)
    assert processor.encode("x") != sentencepiece.SentencePieceProcessor(model_file=spm.spm8k_path()).encode("x")
    out = tmp_path / "hf"
    out.mkdir()
    save_tokenizer("spm8k", str(out))  # a previous export's tokenizer.json must not survive
    recorded, files = save_tokenizer(f"spm:{path}", str(out))
    assert recorded == "spm:spm.model" and files == ["spm.model", "tokenizer_config.json"]
    assert sorted(os.listdir(out)) == ["spm.model", "tokenizer_config.json"]
    assert "add_dummy_prefix is on" in transformers_note(str(out))
    (out / "config.json").write_text(json.dumps({"model_type": "phi", "vocab_size": 8192}))
    with pytest.raises(Exception):  # not an empty GPT-2 tokenizer
        transformers.AutoTokenizer.from_pretrained(str(out))

    # Through the CLI: the export succeeds (the weights are usable with sentencepiece) and says why.
    config = get_preset("phi-cpu-1m")
    save_params(_random_params(config, seed=0, scale=0.1), config, str(tmp_path / "params"))
    capsys.readouterr()
    assert main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "params"), "--out", str(tmp_path / "hf2"),
                 "--vocabulary", f"spm:{path}"]) == 0
    printed = capsys.readouterr().out
    assert "no transformers tokenizer" in printed and "add_dummy_prefix is on" in printed
    assert not (tmp_path / "hf2" / "tokenizer.json").exists()


def test_unsupported_settings_are_named():
    from textbooks.vocab import spm_hf

    with open(spm.spm8k_path(), "rb") as f:
        proto = spm_hf.load_proto(f.read())
    assert spm_hf.unsupported(proto) == []
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.trainer_spec.byte_fallback = False
    problems = spm_hf.unsupported(proto)
    assert any("remove_extra_whitespaces" in p for p in problems) and any("byte_fallback" in p for p in problems)
    with pytest.raises(spm_hf.UnsupportedModelError, match="remove_extra_whitespaces"):
        spm_hf.build_tokenizer(proto.SerializeToString())
