"""`textbooks convert --from-gguf` through the CLI on the shipped SmolLM2 file, and the imports that must write
nothing: a cut GGUF file, a tokenizer that does not fit the embedding."""

import json
import os
import shutil

import numpy as np
import pytest

from textbooks.cli import main
from textbooks.data_packages import resolve_checkpoint
from textbooks.model import load_params
from textbooks.model.load import load_model

NAME = "smollm2-135m-instruct"


@pytest.mark.slow
def test_import_of_the_registered_gguf_matches_loading_the_file(tmp_path, capsys):
    """The params folder holds the same weights as reading the GGUF directly (bit for bit: the same
    dequantization and layout conversion), and its tokenizer files give transformers the same ids and chat
    template as the GGUF tokenizer."""
    import transformers

    out = tmp_path / "smol"
    assert main(["convert", "--from-gguf", NAME, "--out", str(out)]) == 0
    assert "llama, 134,515,008 parameters" in capsys.readouterr().out
    config, params = load_params(str(out))
    direct = load_model(NAME)
    assert config == direct.config
    for (path, a), b in zip(_leaves(params), [leaf for _, leaf in _leaves(direct.params)]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)

    imported = load_model(str(out))  # the folder as a checkpoint: its own tokenizer and chat template
    assert imported.vocabulary_name == f"hf:{out / 'tokenizer.json'}"
    assert imported.chat_template == direct.chat_template and imported.chat_template
    texts = ["def f(x):\n    return x  # ok", "The sky is blue because of Rayleigh scattering.", "<|im_start|>user"]
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in texts:
        ids = [int(i) for i in imported.vocabulary.encode(text)]
        assert ids == [int(i) for i in direct.vocabulary.encode(text)]
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
    messages = [{"role": "user", "content": "Hi!"}]
    assert imported.vocabulary.render_chat(messages, add_generation_prompt=True) == tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def _leaves(tree):
    import jax

    return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def test_a_cut_gguf_file_is_refused_by_name_and_nothing_is_written(tmp_path, capsys):
    source = resolve_checkpoint(NAME)
    cut = tmp_path / "cut.gguf"
    with open(source, "rb") as f, open(cut, "wb") as g:
        g.write(f.read(os.path.getsize(source) // 2))  # the header is whole, the tensor data is not
    assert main(["convert", "--from-gguf", str(cut), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cut.gguf" in err and "truncated" in err.lower()
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_larger_than_the_embedding_is_refused_and_nothing_is_written(tmp_path, capsys):
    """A Llama folder whose tokenizer.json has more tokens than the model has embedding rows: the tokenizer
    does not belong to the weights."""
    import torch
    import transformers

    from textbooks.vocab.gguf_tokenizer import tokenizer_from_gguf

    folder = tmp_path / "hf"
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer_from_gguf(resolve_checkpoint(NAME)).save(str(folder / "tokenizer.json"))  # 49,152 tokens
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    before = sorted(os.listdir(folder))
    assert main(["convert", "--from-hf", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "49152 tokens but the model only 64 embedding rows" in err
    assert not (tmp_path / "out").exists() and sorted(os.listdir(folder)) == before
    shutil.rmtree(folder)
