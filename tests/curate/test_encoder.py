"""The Flax MiniLM encoder against the reference transformers BertModel (torch) on the same package files."""

import os

import numpy as np
import pytest

from textbooks.curate.encoder import MiniLMEncoder, minilm_dir

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Transformers compute attention over all pairs of positions in a sequence. " * 40,  # truncated at 128
    "",
]


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder(max_length=128, batch_size=4)


def _reference(texts, max_length):
    import torch
    import transformers
    model_dir = minilm_dir()
    model = transformers.BertModel.from_pretrained(model_dir).eval()
    tokenizer = transformers.BertTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_matches_transformers_bert(encoder):
    ours = encoder.embed(TEXTS)
    ref = _reference(TEXTS, 128)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours * ref).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine


def test_known_similarity(encoder):
    a, b, c = encoder.embed(TEXTS[:3])
    assert float(a @ b) == pytest.approx(0.755, abs=0.005)
    assert float(a @ c) < float(a @ b)


def test_batching_and_order_do_not_change_embeddings(encoder):
    together = encoder.embed(TEXTS)
    alone = np.stack([encoder.embed([t])[0] for t in reversed(TEXTS)])[::-1]
    np.testing.assert_allclose(together, alone, atol=2e-5)


@pytest.mark.slow  # loads a checkpoint through load_model (orbax/TensorFlow imports) and runs torch
def test_phi_checkpoint_embeddings_match_transformers(tmp_path):
    """Mean-pooled final hidden states of a phi checkpoint (our Flax model via load_model) against
    transformers' PhiModel on the same transformers-format files."""
    import torch
    import transformers
    from textbooks.curate.embeddings import EncoderSpec, PhiEncoder
    from textbooks.model import causal_lm
    from textbooks.model.config import get_preset
    from textbooks.model.hf import save_hf_checkpoint

    config = get_preset("phi-cpu-1m")
    config = type(config).from_dict(dict(config.to_dict(), vocab_size=51200))  # the phi vocabulary's ids
    save_hf_checkpoint(causal_lm.init_params(config, 0), config, str(tmp_path))
    encoder = PhiEncoder(str(tmp_path), max_length=64, batch_size=4)
    texts = TEXTS[:5]
    ours = encoder.embed(texts)
    assert ours.shape == (5, config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)

    model = transformers.PhiForCausalLM.from_pretrained(str(tmp_path)).eval()
    ref = []
    for text in texts:
        ids = torch.tensor([list(encoder.vocabulary.encode(text))[:64]])
        with torch.no_grad():
            hidden = model.model(input_ids=ids).last_hidden_state[0]
        pooled = hidden.mean(0)
        ref.append((pooled / pooled.norm()).numpy())
    cosine = (ours * np.stack(ref)).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine
    with pytest.raises(ValueError, match="needs path"):
        EncoderSpec(kind="phi")


def test_embed_records_beam_stage(encoder, tmp_path):
    import apache_beam as beam

    import curate_testdata as td
    from textbooks.curate.embeddings import EmbedRecords, EncoderSpec, get_encoder

    spec = EncoderSpec(max_length=128, batch_size=4)
    recs = [{"id": f"d{i}", "text": t, "role": "r", "source": "s", "license": "l", "split": "train", "meta": {}}
            for i, t in enumerate(TEXTS[:3])]
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(recs) | EmbedRecords(spec)
        load = td.collect({"emb": out | beam.Map(lambda kv: (kv[0], kv[1].tolist()))}, str(tmp_path))
    got = {k: np.array(v) for k, v in load()["emb"]}
    np.testing.assert_allclose(np.stack([got[f"d{i}"] for i in range(3)]), get_encoder(spec).embed(TEXTS[:3]),
                               atol=2e-5)
