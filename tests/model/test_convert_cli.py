"""`textbooks convert` through the CLI: HF -> params folder -> HF, logits preserved; errors; trained checkpoints."""

import json
import types

import numpy as np
from phi_testing import HF_CONFIGS, hf_logits, make_hf_model, our_logits, random_params

from textbooks.cli import main
from textbooks.model import load as model_load
from textbooks.model import load_params

FIELDS = HF_CONFIGS["three_heads_quarter_rotary"]


def test_round_trip_through_the_cli_keeps_the_logits(tmp_path, capsys):
    import transformers

    hf_model = make_hf_model(seed=9, **FIELDS)
    hf_model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids = np.random.RandomState(0).randint(0, FIELDS["vocab_size"], (3, 24))
    expected = hf_logits(hf_model, ids)

    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert "imported" in capsys.readouterr().out
    config, params = load_params(str(tmp_path / "ours"))
    np.testing.assert_allclose(our_logits(config, params, ids), expected, atol=1e-4, rtol=0)

    assert main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "ours"), "--out", str(tmp_path / "back"),
                 "--eos-id", "5"]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["eos_token_id"] == 5
    reloaded = transformers.PhiForCausalLM.from_pretrained(str(tmp_path / "back"), attn_implementation="eager")
    np.testing.assert_allclose(hf_logits(reloaded.eval(), ids), expected, atol=1e-5, rtol=0)


def test_cli_errors_are_reported_and_nothing_is_written(tmp_path, capsys):
    assert main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["convert", "--to-hf", "--out", str(tmp_path / "o")]) == 2
    assert "--to-hf needs --checkpoint" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(dict(FIELDS, model_type="phi")))
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x00" * 20)
    assert main(["convert", "--from-hf", str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 2
    assert "model.safetensors: cannot read safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_to_hf_accepts_what_the_checkpoint_loader_understands(tmp_path, monkeypatch, capsys):
    """A path that is not a params folder goes to textbooks.model.load.load_model (here a stand-in)."""
    from textbooks.model.hf import config_from_hf, load_hf_checkpoint

    config = config_from_hf(dict(FIELDS, model_type="phi", vocab_size=320)).replace(scan_layers=True)
    params = random_params(config, seed=4)
    (tmp_path / "run").mkdir()
    seen = []

    def load_model(path):
        seen.append(path)
        return types.SimpleNamespace(config=config, params=params, vocabulary_name="byte")

    monkeypatch.setattr(model_load, "load_model", load_model)
    assert main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert seen == [str(tmp_path / "run")]
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["eos_token_id"] == 1 and hf_config["textbooks_vocabulary"] == "byte"  # the checkpoint's
    loaded_config, loaded = load_hf_checkpoint(str(tmp_path / "hf"), scan_layers=True)
    assert loaded_config == config
    np.testing.assert_array_equal(loaded["layers"]["self_attn"]["dense"]["kernel"],
                                  params["layers"]["self_attn"]["dense"]["kernel"])

    # Imported back, the params folder keeps the vocabulary, loads as a checkpoint, and exports it again.
    monkeypatch.undo()
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "params")]) == 0
    assert "vocabulary byte" in capsys.readouterr().out
    assert json.loads((tmp_path / "params" / "textbooks_config.json").read_text())["vocabulary"] == "byte"
    loaded = model_load.load_model(str(tmp_path / "params"))
    assert loaded.metadata == {"vocabulary": "byte"} and loaded.vocabulary.vocab_size == 259 and loaded.step is None
    assert main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "params"), "--out", str(tmp_path / "hf2")]) == 0
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["textbooks_vocabulary"] == "byte"

    # A vocabulary larger than the embedding is refused before anything is written.
    assert main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "params"), "--out", str(tmp_path / "o"),
                 "--vocabulary", "spm8k"]) == 2
    assert "vocabulary 'spm8k' has 8192 tokens but the model only 320 embedding rows" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
