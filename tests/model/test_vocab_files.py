"""A vocabulary's files in an exported transformers folder: transformers reads the same ids back, the folder
records its vocabulary, and loading it again picks that vocabulary."""

import json
import os
import shutil

import pytest

from textbooks.model.hf import VOCABULARY_KEY
from textbooks.model.vocab_files import save_tokenizer, vocabulary_name
from textbooks.vocab.registry import get_vocabulary

TEXTS = [
    "def f(x):\n\tif x:\n        return  x  \n\n\n",  # whitespace runs: codegen's added tokens
    "Hello world!<|endoftext|>and more",
    "    leading spaces\n\n\n            deeply = 'indented'",
    "ünïcödé 😀 текст 中文",
    "",
]


def test_phi_files_give_transformers_the_same_ids(tmp_path):
    import transformers

    recorded, files = save_tokenizer("phi", str(tmp_path), max_len=2048)
    assert recorded == "phi" and sorted(files) == ["tokenizer.json", "tokenizer_config.json"]
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = get_vocabulary("phi")
    for text in TEXTS:
        ids = list(ours.encode(text))
        assert theirs.encode(text) == ids, text
        assert theirs.decode(ids) == text
    assert any(i >= 50257 for i in ours.encode(TEXTS[0]))  # the check covers the added tokens
    assert theirs.eos_token_id == ours.eos_id == 50256 and theirs.model_max_length == 2048
    assert len(theirs) == 50295


def test_spm_files_record_a_path_relative_to_the_folder(tmp_path):
    import sentencepiece

    spm8k = get_vocabulary("spm8k")
    shutil.copyfile(spm8k.sentencepiece_model_file, tmp_path / "mine.model")
    out = tmp_path / "export"
    out.mkdir()
    recorded, files = save_tokenizer(f"spm:{tmp_path / 'mine.model'}", str(out))
    assert recorded == "spm:spm.model" and files == ["spm.model", "tokenizer.json", "tokenizer_config.json"]
    (out / "config.json").write_text(json.dumps({"model_type": "phi", VOCABULARY_KEY: recorded}))
    moved = tmp_path / "moved"
    out.rename(moved)
    os.remove(tmp_path / "mine.model")
    name = vocabulary_name(str(moved))
    assert name == f"spm:{moved / 'spm.model'}"
    processor = sentencepiece.SentencePieceProcessor(model_file=str(moved / "spm.model"))
    for text in TEXTS:
        assert list(get_vocabulary(name).encode(text)) == processor.encode(text) == list(spm8k.encode(text))


def test_reexport_replaces_the_other_vocabularys_files(tmp_path):
    save_tokenizer("phi", str(tmp_path))
    spm_files = ["spm.model", "tokenizer.json", "tokenizer_config.json"]
    assert save_tokenizer("spm8k", str(tmp_path)) == ("spm8k", spm_files)
    assert sorted(os.listdir(tmp_path)) == spm_files
    assert save_tokenizer("byte", str(tmp_path)) == ("byte", [])
    assert os.listdir(tmp_path) == []


def test_bad_names_and_records_fail_before_touching_the_folder(tmp_path):
    save_tokenizer("phi", str(tmp_path))
    with pytest.raises(ValueError, match="unknown vocabulary 'gpt4'; known names: phi, spm8k, byte"):
        save_tokenizer("gpt4", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere.model"):
        save_tokenizer(f"spm:{tmp_path / 'nowhere.model'}", str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer_config.json"]

    assert vocabulary_name(str(tmp_path)) == "phi"  # no config.json: a downloaded phi-1.5 is read with 'phi'
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi"}))
    assert vocabulary_name(str(tmp_path)) == "phi"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi", VOCABULARY_KEY: 7}))
    with pytest.raises(ValueError, match=f"config.json: '{VOCABULARY_KEY}' must be a vocabulary name"):
        vocabulary_name(str(tmp_path))
