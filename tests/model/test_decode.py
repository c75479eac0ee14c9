"""KV-cache decoding: greedy equals recomputing the full forward, sampling semantics, stops, errors, buckets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from phi_testing import greedy_by_recomputing

from textbooks.model import Decoder, GenerationRequest, generate
from textbooks.model.sampling import sample_tokens

PROMPT_LENGTHS = (1, 4, 9, 17)
NEW = 10


def _prompts(config, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, config.vocab_size, n).tolist() for n in PROMPT_LENGTHS]


def test_greedy_with_cache_equals_recomputing_the_full_forward(tiny_model):
    config, params = tiny_model
    prompts = _prompts(config)
    outputs = generate(params, config, prompts, max_new_tokens=NEW)
    expected = greedy_by_recomputing(config, params, prompts, NEW)
    assert [o.tokens for o in outputs] == expected
    assert all(o.finish_reason == "length" for o in outputs)
    assert len({tuple(e) for e in expected}) == len(expected)  # not a degenerate constant model


def test_greedy_matches_transformers_generate(tiny_model, tmp_path):
    import torch
    import transformers

    from textbooks.model import save_hf_checkpoint

    config, params = tiny_model
    save_hf_checkpoint(params, config, str(tmp_path))
    hf_model = transformers.PhiForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    prompts = _prompts(config, seed=1)
    ours = generate(params, config, prompts, max_new_tokens=NEW)
    for prompt, out in zip(prompts, ours):
        with torch.no_grad():
            ids = torch.tensor([prompt])  # token 0 is a real token: give the mask rather than a pad id
            theirs = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                       do_sample=False, pad_token_id=0, eos_token_id=None)
        assert out.tokens == theirs[0, len(prompt):].tolist()


def test_sampling_is_reproducible_and_batch_independent(tiny_model):
    config, params = tiny_model
    prompts = _prompts(config)
    kwargs = dict(max_new_tokens=NEW, temperature=1.0)
    first = generate(params, config, prompts, seed=7, **kwargs)
    assert generate(params, config, prompts, seed=7, **kwargs) == first
    assert generate(params, config, prompts, seed=8, **kwargs) != first
    assert [o.tokens for o in first] != [o.tokens for o in generate(params, config, prompts, max_new_tokens=NEW)]

    # A request's tokens depend on its own seed only, not on the other rows of its batch.
    decoder = Decoder(params, config)
    alone = decoder.generate([GenerationRequest(prompts[2], NEW, temperature=0.8, top_p=0.9, seed=11)])
    together = decoder.generate([GenerationRequest(prompts[0], NEW, temperature=1.0, seed=3),
                                 GenerationRequest(prompts[2], NEW, temperature=0.8, top_p=0.9, seed=11),
                                 GenerationRequest(prompts[3], 4)])
    assert together[1] == alone[0]
    assert len(together[2].tokens) == 4


def test_top_k_1_and_tiny_top_p_equal_greedy(tiny_model):
    config, params = tiny_model
    prompts = _prompts(config)
    greedy = generate(params, config, prompts, max_new_tokens=NEW)
    assert generate(params, config, prompts, max_new_tokens=NEW, temperature=1.5, top_k=1, seed=3) == greedy
    assert generate(params, config, prompts, max_new_tokens=NEW, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_sampler_follows_the_definitions():
    """Frequencies of sample_tokens match softmax(logits / T), restricted and renormalized by top-k / top-p."""
    n = 20000
    logits = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.07, 0.03]))
    keys = jax.random.split(jax.random.PRNGKey(0), n)

    def freqs(temperature, top_k, top_p):
        rows = jnp.tile(logits, (n, 1))
        tokens = jax.jit(sample_tokens)(rows, keys, jnp.full(n, temperature), jnp.full(n, top_k, jnp.int32),
                                        jnp.full(n, top_p))
        return np.bincount(np.asarray(tokens), minlength=5) / n

    p = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    np.testing.assert_allclose(freqs(1.0, 0, 1.0), p, atol=0.015)
    tempered = p ** 2 / np.sum(p ** 2)
    np.testing.assert_allclose(freqs(0.5, 0, 1.0), tempered, atol=0.015)
    np.testing.assert_allclose(freqs(1.0, 2, 1.0), [2 / 3, 1 / 3, 0, 0, 0], atol=0.015)
    # top-p 0.8: the smallest set reaching 0.8 is {0, 1, 2} (0.5 + 0.25 < 0.8 <= 0.9).
    np.testing.assert_allclose(freqs(1.0, 0, 0.8), np.array([0.5, 0.25, 0.15, 0, 0]) / 0.9, atol=0.015)
    np.testing.assert_array_equal(freqs(0.0, 0, 1.0), [1, 0, 0, 0, 0])


def test_stop_sequences_and_eos_end_generation(tiny_model):
    config, params = tiny_model
    prompts = _prompts(config)
    greedy = [o.tokens for o in generate(params, config, prompts, max_new_tokens=NEW)]
    stop = greedy[3][4:6]
    eos = greedy[1][5]
    outputs = generate(params, config, prompts, max_new_tokens=NEW, stop_sequences=[stop, [63, 62, 61]],
                       eos_id=eos)
    for tokens, out in zip(greedy, outputs):
        cut_eos = tokens.index(eos) if eos in tokens else None
        cut_stop = next((i for i in range(len(tokens) - 1) if tokens[i:i + 2] == stop), None)
        if cut_eos is not None and (cut_stop is None or cut_eos <= cut_stop + 1):
            assert out == type(out)(tokens[:cut_eos], "eos")
        elif cut_stop is not None:
            assert out == type(out)(tokens[:cut_stop], "stop")
        else:
            assert out == type(out)(tokens, "length")
    assert outputs[3].finish_reason in ("stop", "eos") and outputs[1].finish_reason == "eos"


def test_bad_requests_are_rejected_with_clear_errors(tiny_model):
    config, params = tiny_model
    with pytest.raises(ValueError, match="request 1: empty prompt"):
        generate(params, config, [[1, 2], []], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"token id 64 at position 2 is outside the vocabulary \[0, 64\)"):
        generate(params, config, [[1, 2, 64]], max_new_tokens=3)
    with pytest.raises(ValueError, match="token id -1"):
        generate(params, config, [[-1]], max_new_tokens=3)
    with pytest.raises(ValueError, match="60 \\+ max_new_tokens 5 = 65 exceeds the model's max_len 64"):
        generate(params, config, [[1] * 60], max_new_tokens=5)
    with pytest.raises(ValueError, match="top_p"):
        generate(params, config, [[1]], max_new_tokens=3, top_p=0.0)
    with pytest.raises(ValueError, match="stop sequence 0 is empty"):
        generate(params, config, [[1]], max_new_tokens=3, stop_sequences=[[]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(params, config, [[1]], max_new_tokens=0)


def test_decoder_compiles_a_bounded_set_of_shapes(tiny_model):
    config, params = tiny_model
    decoder = Decoder(params, config, max_batch_size=4)
    rng = np.random.RandomState(5)
    for n in (3, 7, 4):
        requests = [GenerationRequest(rng.randint(0, 64, rng.randint(8, 18)).tolist(), int(rng.randint(9, 11)))
                    for _ in range(n)]
        outputs = decoder.generate(requests)
        assert [len(o.tokens) for o in outputs] == [r.max_new_tokens for r in requests]
    # 14 requests of different lengths, in chunks of at most 4 rows, all ran in one bucket: (rows, prompt
    # length, cache length, new tokens, stop sequences, stop length).
    assert decoder.shapes_used == {(4, 16, 32, 16, 1, 4)}
