"""SmolLM2-135M-Instruct's GGUF tokenizer against transformers' ``AutoTokenizer.from_pretrained(folder,
gguf_file=name)``: the same Tokenizer, the same ids on ~250 varied texts (in Python and in tf.data, with and
without the special tokens transformers adds), byte-exact round trips, the same special tokens and chat
template, and a saved folder that transformers loads with the same ids. Synthetic GGUF files (written with
``gguf.GGUFWriter``) cover the other pre-tokenizers, USER_DEFINED and mislabelled CONTROL tokens, bos/eos
flags, and the refusals."""

import json
import os
import pickle
import sysconfig

import gguf
import numpy as np
import pytest
import tensorflow as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer

from textbooks.data_packages import resolve_checkpoint
from textbooks.vocab.gguf_tokenizer import (byte_spelling, chat_template_from_gguf, special_tokens_from_gguf,
                                            tokenizer_from_gguf)
from textbooks.vocab.hf_tokenizer import TokenizerVocabulary
from textbooks.vocab.registry import get_vocabulary, vocabulary_size

SMOLLM2 = "smollm2-135m-instruct"
STDLIB = sysconfig.get_paths()["stdlib"]
STDLIB_FILES = ["textwrap.py", "heapq.py", "json/decoder.py", "tokenize.py", "string.py", "functools.py"]
EOS = "<|im_end|>"


def _corpus() -> list[str]:
    """~250 texts: standard-library code (whole files and 25-line windows), whitespace runs before letters
    and digits, prose, numbers, unicode of many scripts, chat markup and other special tokens written as
    text, control characters, the empty string and a long text."""
    texts = []
    for name in STDLIB_FILES:
        with open(os.path.join(STDLIB, name), encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        texts.append("".join(lines[:400]))
        texts += ["".join(lines[i:i + 25]) for i in range(0, 250, 25)]
    for n in (1, 2, 3, 4, 5, 8, 9, 16, 31, 33, 64):
        texts += [" " * n, "x" + " " * n + "y", " " * n + "return x", "\t" * n + "pass\n", "\n" * n,
                  "a" + " " * n + "1", "a" + "\t" * n + "42", "=" * n + "-" * n, "\r\n" * n + "end"]
    texts += [
        "def f(x):\n\tif x:\n\t\treturn  x  \n\n\n", "class A:\n    def m(self):\n        pass\n",
        "The quick brown fox jumps over the lazy dog. It's 2024; prices rose 3.5% — didn't they?",
        "Python is a programming language that lets you work quickly and integrate systems more effectively.",
        "3.14159 1e-10 0xDEADBEEF 1_000_000 123456789012345678901234567890 -42 +7 1,234.56 ½ ² ٣ ໕",
        "ünïcödé café naïve Ångström São Paulo Zürich façade", "漢字 中文 日本語のテキスト 한국어 텍스트",
        "emoji 😀🎉👩‍💻🇫🇷 🧑🏽‍🚀 ❤️", "العربية من اليمين إلى اليسار", "עברית מימין לשמאל",
        "हिन्दी ภาษาไทย Ελληνικά русский текст", "∑∫√∞ ≤≥≠ →⇒ ⊂⊃ ∀∃", "e\u0301 \u200b \u00a0 \u3000 \ufeff \u2028",
        "\x00\x01\x07\x1b[0m\x7f", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 \U0010ffff \ue000",
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", "<|im_start|><|im_start|>system",
        "text <|endoftext|> more <|endoftext|><|endoftext|>", "<repo_name>x<file_sep>y<filename>z.py<gh_stars>",
        "<|im_start|", "<|im_end", "|im_start|>", "<|IM_START|>", "< |im_start| >", "<think>not special</think>",
        "", " ", "x", "\n", "'s 't 're 've 'm 'll 'd", "I'M YOU'LL", "don't won't can't", "ĠĊ Ġ Ċ ĉ",
        "    >>> print('hello')\n    hello\n", "``code`` and **bold** -- and *** ~~~", "#" * 80 + "\n# title\n",
        "SELECT * FROM t WHERE a = 'b' AND c <> 1;", '{"key": [1, 2.5, null, true], "k2": {"n": "v"}}',
        "https://example.com/path?q=1&r=two#frag", "a\u0000b", "tab\tsep\tvalues\n1\t2\t3\n",
    ]
    texts.append("Long text. " * 2000 + "\n".join(f"    line {i}\twith  spaces  {i * 7}" for i in range(500)))
    return list(dict.fromkeys(texts))


CORPUS = _corpus()


@pytest.fixture(scope="module")
def gguf_path():
    return resolve_checkpoint(SMOLLM2)  # the file in the installed data package, found without importing it


@pytest.fixture(scope="module")
def reference(gguf_path):
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    return tokenizer_from_gguf(gguf_path)


@pytest.fixture(scope="module")
def vocab(gguf_path):
    return get_vocabulary(f"gguf:{gguf_path}")


@pytest.fixture(scope="module")
def reference_ids(reference):
    return reference(CORPUS, add_special_tokens=False)["input_ids"]


def test_corpus_is_varied():
    assert len(CORPUS) >= 200 and len(set(CORPUS)) == len(CORPUS)
    assert "" in CORPUS and max(map(len, CORPUS)) > 20_000


def test_builds_transformers_tokenizer(tokenizer, reference):
    # Same model (vocabulary, merges), added tokens, pre-tokenizer, post-processor and decoder.
    assert json.loads(tokenizer.to_str()) == json.loads(reference.backend_tokenizer.to_str())
    assert set(byte_spelling().values()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_ids_match_transformers(tokenizer, vocab, reference, reference_ids):
    ours = [e.ids for e in tokenizer.encode_batch(CORPUS, add_special_tokens=False)]
    assert ours == reference_ids
    assert vocab.encode_batch(CORPUS) == reference_ids
    for text, ids in zip(CORPUS, reference_ids):
        assert vocab.encode(text) == ids, text[:80]
    # With special tokens added as each side adds them (SmolLM2's file adds none: add_bos_token is false).
    with_special = [e.ids for e in tokenizer.encode_batch(CORPUS)]
    assert with_special == reference(CORPUS)["input_ids"] == reference_ids
    # Chat markup is matched whole; digits after a whitespace run follow transformers, not llama.cpp.
    assert vocab.encode("<|im_start|>user\nhi<|im_end|>")[0] == 1 and vocab.encode("x<|im_end|>")[-1] == 2
    assert [reference.convert_ids_to_tokens(i) for i in vocab.encode("a  1")] == ["a", "Ġ", "Ġ", "1"]


def test_tf_data_matches_transformers(vocab, reference_ids):
    ds = tf.data.Dataset.from_tensor_slices(CORPUS).map(vocab.encode_tf)
    assert ds.element_spec.shape.as_list() == [None] and ds.element_spec.dtype == tf.int32
    for ids, expected in zip(ds, reference_ids):
        assert ids.numpy().tolist() == expected
    ragged = vocab.encode_tf(tf.constant(CORPUS[:60]))
    assert ragged.to_list() == reference_ids[:60]


def test_round_trips_and_decode(vocab, reference, reference_ids):
    for text, ids in zip(CORPUS, reference_ids):
        # Decoding stops at the first end-of-sequence id (<|im_end|>), as seqio does.
        expected = text.split(EOS)[0]
        assert vocab.decode(ids) == expected, text[:80]
        if EOS not in text:
            assert reference.decode(ids) == text
    # Six control characters (and bytes no UTF-8 text has) are not in SmolLM2's vocabulary: BPE without an
    # unknown token drops them, in transformers as here.
    assert vocab.encode("a\x04\x06\x13\x14\x16\x1db") == reference("a\x04\x06\x13\x14\x16\x1db")["input_ids"]
    assert vocab.decode(vocab.encode("a\x04\x06\x13\x14\x16\x1db")) == "ab"
    ids = vocab.encode("hello world")
    assert vocab.decode(ids + [2] + vocab.encode("after")) == "hello world"
    assert vocab.decode(ids + [49152, 50000]) == "hello world"  # ids past the vocabulary decode to nothing
    rows = [reference_ids[i] for i in range(0, 120, 7) if EOS not in CORPUS[i]]
    width = max(map(len, rows)) + 3
    batch = np.asarray([r + [2] + [5] * (width - len(r) - 1) for r in rows], dtype=np.int32)
    assert [s.decode("utf-8") for s in vocab.decode_tf(tf.constant(batch)).numpy()] == [vocab.decode(r) for r in rows]


def test_special_tokens_and_chat_template(gguf_path, vocab, reference):
    special = special_tokens_from_gguf(gguf_path)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert special[name] == getattr(reference, name), name
        assert special[f"{name}_id"] == getattr(reference, f"{name}_id"), name
    assert vocab.special_tokens == special
    assert vocab.eos_id == reference.eos_token_id == 2 and vocab.bos_id == reference.bos_token_id == 1
    assert vocab.vocab_size == len(reference) == vocabulary_size(f"gguf:{gguf_path}") == 49152
    assert chat_template_from_gguf(gguf_path) == reference.chat_template == vocab.chat_template
    assert "<|im_start|>" in vocab.chat_template


def test_saved_folder_loads_in_transformers(vocab, reference, reference_ids, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("smollm2_tokenizer"))
    assert sorted(os.path.basename(p) for p in vocab.save(folder)) == ["tokenizer.json", "tokenizer_config.json"]
    loaded = AutoTokenizer.from_pretrained(folder)
    assert loaded(CORPUS, add_special_tokens=False)["input_ids"] == reference_ids
    assert loaded(CORPUS[:40])["input_ids"] == reference(CORPUS[:40])["input_ids"]
    assert loaded.special_tokens_map == reference.special_tokens_map and len(loaded) == len(reference)
    assert loaded.chat_template == reference.chat_template
    again = get_vocabulary(f"hf:{folder}")
    assert again.encode_batch(CORPUS) == reference_ids and again.special_tokens == vocab.special_tokens
    assert again.chat_template == vocab.chat_template


def test_vocabulary_pickles_and_compares(vocab, tokenizer, tmp_path):

    copy = pickle.loads(pickle.dumps(vocab))
    assert copy == vocab and hash(copy) == hash(vocab) and copy.encode(CORPUS[0]) == vocab.encode(CORPUS[0])
    from_object = TokenizerVocabulary(tokenizer, special_tokens={"eos_token": EOS})
    assert from_object.eos_id == 2 and from_object.encode(CORPUS[1]) == vocab.encode(CORPUS[1])
    assert pickle.loads(pickle.dumps(from_object)) == from_object != vocab
    splitting = TokenizerVocabulary(tokenizer, special_tokens={"eos_token": EOS}, split_special_tokens=True)
    ids = splitting.encode("a<|im_end|>b")
    assert 2 not in ids and splitting.decode(ids) == "a<|im_end|>b"
    splitting.save(str(tmp_path))  # the setting travels in tokenizer_config.json
    assert TokenizerVocabulary(str(tmp_path)).encode("a<|im_end|>b") == ids == \
        AutoTokenizer.from_pretrained(str(tmp_path))("a<|im_end|>b", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="names no eos token"):
        TokenizerVocabulary(tokenizer)


# ---------------------------------------------------------------------------------------------------------
# Synthetic GGUF files.


def _write_gguf(path: str, *, model: str, tokens: list[str], types: list[int], merges: list[str] | None = None,
                pre: str | None = None, bos: int | None = 1, eos: int | None = 2, add_bos: bool | None = None,
                add_eos: bool | None = None) -> str:
    """A GGUF file with a tiny Llama architecture's hyperparameters, a tokenizer and no tensors."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    if add_eos is not None:
        w.add_add_eos_token(add_eos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def small_fields(gguf_path):
    """SmolLM2's first 3,000 tokens with the merges among them (small files read fast; a real BPE still)."""
    reader = gguf.GGUFReader(gguf_path)
    fields = {key: reader.fields[f"tokenizer.ggml.{key}"].contents() for key in ("tokens", "token_type", "merges")}
    tokens = fields["tokens"][:3000]
    kept = set(tokens)
    merges = [m for m in fields["merges"] if m.replace(" ", "") in kept and all(p in kept for p in m.split(" "))]
    assert len(merges) > 2000
    return {"tokens": tokens, "token_type": fields["token_type"][:3000], "merges": merges}


VARIANTS = {
    # pre-tokenizer, add_bos, add_eos
    "llama-bpe": ("llama-bpe", True, False),
    "qwen2": ("qwen2", False, True),
    "no pre key": (None, True, True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_other_pre_tokenizers_and_token_types_match_transformers(variant, small_fields, tmp_path):
    # Part of SmolLM2's vocabulary and merges under another split, with bos/eos flags, two USER_DEFINED tokens (one
    # added, one renamed from CONTROL) and a CONTROL token spelled outside the byte alphabet (a mislabel that
    # stays a plain vocabulary entry).
    pre, add_bos, add_eos = VARIANTS[variant]
    # Multi-digit tokens (which SmolLM2 lacks) tell the splits apart: Llama-3 cuts numbers into runs of up to
    # three digits, Qwen2 into single digits, GPT-2 not at all.
    digits, digit_merges = ["12", "123", "20", "24", "2024"], ["1 2", "12 3", "2 0", "2 4", "20 24"]
    tokens = list(small_fields["tokens"]) + digits + ["<think>", "<|odd token|>"]
    types = (list(small_fields["token_type"]) + [int(gguf.TokenType.NORMAL)] * len(digits)
             + [int(gguf.TokenType.USER_DEFINED), int(gguf.TokenType.CONTROL)])
    types[5] = int(gguf.TokenType.USER_DEFINED)  # <file_sep>
    path = _write_gguf(str(tmp_path / f"{variant}.gguf"), model="gpt2", pre=pre, tokens=tokens, types=types,
                       merges=small_fields["merges"] + digit_merges, add_bos=add_bos, add_eos=add_eos)
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=os.path.basename(path))
    texts = CORPUS[::3] + ["a <think>b</think> <file_sep>c <|odd token|> 2024 12345 x\r\n\r\n  y",
                           "12312 2024202412 a1234b 1 12 123 $1234"]
    ours = tokenizer_from_gguf(path)
    assert [e.ids for e in ours.encode_batch(texts, add_special_tokens=False)] == \
        reference(texts, add_special_tokens=False)["input_ids"]
    assert [e.ids for e in ours.encode_batch(texts)] == reference(texts)["input_ids"]
    assert ours.get_vocab_size() == len(reference) == len(tokens)
    number = ours.encode("12345", add_special_tokens=False).tokens
    assert number == (["1", "2", "3", "4", "5"] if variant == "qwen2" else ["123", "4", "5"])
    vocab = TokenizerVocabulary(path)
    assert vocab.encode_batch(texts) == reference(texts, add_special_tokens=False)["input_ids"]
    ids = vocab.encode(texts[-1])
    assert vocab.decode(ids) == reference.decode(ids) == texts[-1]


def test_refusals_name_file_key_and_value(tmp_path):
    tokens, types = ["<unk>", "<s>", "</s>", "a", "b"], [2, 3, 3, 1, 1]
    for model in ("llama", "bert", "t5"):
        path = _write_gguf(str(tmp_path / f"{model}.gguf"), model=model, tokens=tokens, types=types)
        with pytest.raises(ValueError, match=rf"{path}: tokenizer model tokenizer\.ggml\.model = '{model}'"):
            tokenizer_from_gguf(path)
        with pytest.raises(ValueError, match=f"tokenizer.ggml.model = '{model}'"):
            get_vocabulary(f"gguf:{path}")
    path = _write_gguf(str(tmp_path / "pre.gguf"), model="gpt2", pre="starcoder", tokens=tokens, types=types,
                       merges=["a b"])
    with pytest.raises(ValueError, match=rf"{path}: pre-tokenizer tokenizer\.ggml\.pre = 'starcoder'"):
        tokenizer_from_gguf(path)
    path = _write_gguf(str(tmp_path / "no_merges.gguf"), model="gpt2", tokens=tokens, types=types)
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.merges is missing"):
        tokenizer_from_gguf(path)
    path = _write_gguf(str(tmp_path / "bad_eos.gguf"), model="gpt2", tokens=tokens, types=types, merges=[], eos=9)
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.eos_token_id = 9 is not an id of the 5 tokens"):
        special_tokens_from_gguf(path)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        tokenizer_from_gguf(str(tmp_path / "missing.gguf"))
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not.gguf is not a GGUF file"):
        chat_template_from_gguf(str(tmp_path / "not.gguf"))
    with pytest.raises(FileNotFoundError, match="nowhere/tokenizer.json not found"):
        get_vocabulary(f"hf:{tmp_path}/nowhere/tokenizer.json")
    with pytest.raises(FileNotFoundError, match="GGUF file .*nowhere.gguf not found"):
        get_vocabulary(f"gguf:{tmp_path}/nowhere.gguf")
    Tokenizer(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="names no eos token"):
        get_vocabulary(f"hf:{tmp_path}")
