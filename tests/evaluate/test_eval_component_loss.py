"""Per-component validation loss and bits per byte against a direct, unpacked computation."""

import math

import jax
import numpy as np
import pytest

from textbooks.evaluate import component_loss

ROLES = ["code_exercises", "web_raw"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    from mixtures import testing

    root = str(tmp_path_factory.mktemp("corpora"))
    testing.write_corpora(root, ROLES, mean_chars={"code_exercises": 120, "web_raw": 200},
                          num_docs={"train": 4, "validation": 7}, num_shards=1)
    return root


def _direct(model, config, params, texts, length):
    """Sum of -log p over each document's tokens (plus end-of-text), one unpacked forward per piece."""
    from textbooks.model.causal_lm import CausalLM

    module = CausalLM(config)
    forward = jax.jit(lambda p, x, s: module.apply({"params": p}, x, segment_ids=s))
    nats, tokens = 0.0, 0
    for text in texts:
        ids = model.encode(text) + [model.eos_id]
        for start in range(0, len(ids), length):
            piece = ids[start:start + length]
            inputs = np.zeros((1, length), np.int32)  # one piece per row, right-padded (segment 0)
            segments = np.zeros((1, length), np.int32)
            inputs[0, :len(piece)] = [model.eos_id] + piece[:-1]
            segments[0, :len(piece)] = 1
            logits = np.asarray(forward(params, inputs, segments)[0, :len(piece)], np.float64)
            logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            nats -= float(np.sum(logp[np.arange(len(piece)), piece]))
            tokens += len(piece)
    return nats, tokens


def test_shard_losses_match_an_unpacked_computation(tiny_model, tiny_config, tiny_params, corpora):
    from textbooks.data import paths, records

    losses = component_loss.shard_losses(tiny_model, ROLES, data_root=corpora, seq_len=128, batch_size=4)
    assert sorted(losses) == ROLES
    for role in ROLES:
        texts = [r.text for r in records.iter_records(paths.split_pattern(role, "validation", corpora))]
        nats, tokens = _direct(tiny_model, tiny_config, tiny_params, texts, 128)
        got = losses[role]
        assert got.tokens == tokens
        assert got.nats == pytest.approx(nats, rel=1e-5)
        assert all(tiny_model.decode(tiny_model.encode(t)) == t for t in texts)  # exact round trip here
        assert got.bytes == sum(len(t.encode("utf-8")) for t in texts)
        assert got.bpb == pytest.approx(nats / math.log(2) / got.bytes, rel=1e-5)
        assert got.loss == pytest.approx(nats / tokens, rel=1e-5)


def test_mixture_component_losses_agree_with_the_shard_files(tiny_model, tiny_config, tiny_params, corpora,
                                                           monkeypatch):
    import mixtures  # noqa: F401 - registers the role tasks

    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", corpora)
    via_files = component_loss.shard_losses(tiny_model, ["code_exercises"], data_root=corpora, seq_len=256)
    via_seqio = component_loss.component_losses(tiny_model, "code_exercises", vocabulary_name="spm8k",
                                                seq_len=256, batch_size=4)
    assert list(via_seqio) == ["code_exercises"]
    a, b = via_seqio["code_exercises"], via_files["code_exercises"]
    assert a.tokens == b.tokens and a.bytes == b.bytes
    # The training pipeline packs documents as a stream (a document may continue on the next row without its
    # earlier context), so the totals differ a little from one-document-per-piece packing ...
    assert a.nats == pytest.approx(b.nats, rel=5e-3)
    # ... and equal a direct recomputation over the pipeline's own batches.
    from textbooks.inputs import pipeline
    from textbooks.model.causal_lm import CausalLM

    module = CausalLM(tiny_config)
    forward = jax.jit(lambda p, x, s, q: module.apply({"params": p}, x, segment_ids=s, positions=q))
    nats = 0.0
    for batch in pipeline.make_eval_datasets("code_exercises", task_feature_lengths=256, batch_size=4,
                                             vocabulary="spm8k")["code_exercises"]:
        logits = np.asarray(forward(tiny_params, batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                                    batch["decoder_positions"]), np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
        nats -= float(np.sum(picked * batch["decoder_loss_weights"]))
    assert a.nats == pytest.approx(nats, rel=1e-5)


def test_packing_keeps_documents_apart():
    rows = list(component_loss.pack_documents([[5, 6, 1], [7, 1], [8, 9, 10, 11, 12, 1]], length=5, bos_id=1))
    assert [r["decoder_target_tokens"].tolist() for r in rows] == [[5, 6, 1, 7, 1], [8, 9, 10, 11, 12], [1, 0, 0, 0, 0]]
    assert rows[0]["decoder_segment_ids"].tolist() == [1, 1, 1, 2, 2]
    assert rows[0]["decoder_input_tokens"].tolist() == [1, 5, 6, 1, 7]
    assert rows[0]["decoder_positions"].tolist() == [0, 1, 2, 0, 1]
    assert rows[2]["decoder_loss_weights"].tolist() == [1, 0, 0, 0, 0]
