"""The real SmolLM2-135M-Instruct (its GGUF file, 30 layers, 9 query heads sharing 3 KV heads, tied head) against
transformers' own import of the same file: logits, and greedy decoding of 8 chat-templated and plain prompts
by 32 tokens, cached (XLA ops and the CPU kernels), recomputed without a cache, and continuously batched.

Both sides dequantize the file identically (tests/model/test_gguf.py checks the weights bit for bit), so what
is left between them is float32 rounding. A greedy token can flip only where two logits are closer than that
rounding allows; :func:`assert_same_greedy` compares a row's tokens up to its first such near tie, and the
tests say how many of the steps that left.
"""

import contextlib
import copy
import os

import numpy as np
import pytest
import torch
from phi_testing import our_logits
from transformers import AutoModelForCausalLM

from textbooks.model import cpu_kernels
from textbooks.model.decode import Decoder, GenerationOutput, GenerationRequest
from textbooks.model.load import load_model
from textbooks.model.slots import SlotDecoder

pytestmark = pytest.mark.slow  # loading the model twice (ours and transformers') alone takes ~40 s

NAME = "smollm2-135m-instruct"
NEW_TOKENS = 32
# Two float32 forwards of the same weights differ by rounding: a contraction of length n adds about sqrt(n) * eps
# relative error (a random walk of eps = 2**-24 steps), and the independent errors of the contractions a logit
# passes through add in quadrature: per layer the projections from the hidden state (n = 576: q/k/v, gate/up,
# output), attention scores (head dim 64), the weighted sum of values (< 80 positions) and the MLP's down
# projection (1536); 30 layers and the head (576): eps * sqrt(30 * 3408 + 576) = 1.9e-5 relative, times the
# logit scale, |logit| <= MAX_ABS_LOGIT (asserted): 9.6e-4. RMSNorm and the rotary cos/sin add one eps-relative
# error each per layer, well inside. test_float32_forwards_are_within_tol_of_float64 checks the premise that each
# float32 forward (ours and transformers') is this close to the exact one. A wrong head grouping, rotary
# frequency or weight moves logits by O(1).
TOL = 1e-3
MAX_ABS_LOGIT = 50.0
# If two computations' logits are each within TOL of the exact ones, their argmaxes can differ only where the
# exact top-2 margin is under 2 TOL, i.e. where the reference's margin (itself within 2 TOL of exact) is under
# 4 TOL. Greedy rows are compared up to the first step with such a near tie.
TIE_MARGIN = 4 * TOL


@contextlib.contextmanager
def torch_threads(n):
    """torch on ``n`` threads (OpenMP spinning makes 2 threads several times slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm2():
    loaded = load_model(NAME)
    assert loaded.path.endswith(".gguf") and loaded.vocabulary.eos_id == 2
    assert (loaded.config.num_layers, loaded.config.num_heads, loaded.config.num_kv_heads) == (30, 9, 3)
    return loaded


@pytest.fixture(scope="module")
def prompts(smollm2):
    """Eight prompts of 5 to 47 tokens: four plain, four rendered with the model's chat template."""
    vocab = smollm2.vocabulary

    def chat(*turns):
        return vocab.render_chat([{"role": r, "content": c} for r, c in turns], add_generation_prompt=True)

    texts = ["The capital of France is", "def fibonacci(n):\n", chat(("user", "Hi!")),
             chat(("user", "What is the capital of France?")),
             "Once upon a time, in a small village by the sea, there lived an old fisherman who",
             chat(("system", "You are terse."), ("user", "Name three primary colours.")),
             chat(("user", "Write a haiku about the ocean and explain each of its lines in a sentence.")),
             'import numpy as np\n\ndef softmax(x):\n    """Numerically stable softmax."""\n']
    ids = [[int(t) for t in vocab.encode(t)] for t in texts]
    assert len({len(p) for p in ids}) == len(ids)  # every row its own length: right padding differs per row
    return ids


@pytest.fixture(scope="module")
def transformers_model(smollm2):
    """transformers' LlamaForCausalLM from the same GGUF file, float32."""
    folder, name = os.path.split(smollm2.path)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference(transformers_model, prompts):
    """transformers' greedy continuations (one left-padded batch; eos does not stop them), and its logits on each
    prompt + continuation (one full forward per row)."""
    model = transformers_model
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    # 32 tokens in every row, on past <|im_end|>. The mask is explicit: generate() would otherwise mask every
    # pad-id token, and the model's pad id is <|im_end|>, which chat-templated prompts contain.
    with torch_threads(1), torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                             eos_token_id=[], pad_token_id=0)  # no stop ids (None means the config's eos)
        tokens = [out[row, width:].tolist() for row in range(len(prompts))]
        logits = [model(torch.tensor([p + t])).logits[0].numpy() for p, t in zip(prompts, tokens)]
    # Top-2 margin of the logits that chose each generated token.
    margins = []
    for p, row in zip(prompts, logits):
        top2 = np.sort(row[len(p) - 1:-1], axis=-1)[:, -2:]
        margins.append(top2[:, 1] - top2[:, 0])
    return {"tokens": tokens, "logits": logits, "margins": margins}


@pytest.fixture(scope="module")
def our_forward(smollm2, prompts, reference):
    """Our logits on the same rows (one right-padded batch, no cache: the recomputing reference)."""
    rows = [p + t for p, t in zip(prompts, reference["tokens"])]
    ids = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r  # right padding never reaches earlier positions (causal attention)
    logits = our_logits(smollm2.config, smollm2.params, ids)
    return [logits[i, :len(r)] for i, r in enumerate(rows)]


def assert_same_greedy(got, want, margins, what):
    """Asserts ``got`` equals ``want`` (token lists, one per row) at every step before the row's first near tie
    (reference margin under TIE_MARGIN); returns the number of steps compared."""
    compared = 0
    for row, (g, w, m) in enumerate(zip(got, want, margins)):
        assert len(g) == len(w) == NEW_TOKENS, (what, row, len(g))
        ties = np.flatnonzero(m <= TIE_MARGIN)
        n = int(ties[0]) if ties.size else NEW_TOKENS
        if g[:n] != w[:n]:
            step = next(k for k in range(n) if g[k] != w[k])
            pytest.fail(f"{what}, row {row}: token {g[step]} instead of {w[step]} at step {step}, where the "
                        f"reference's top-2 margin is {m[step]:.4f} > {TIE_MARGIN}")
        compared += n
    total = NEW_TOKENS * len(got)
    print(f"{what}: {compared} of {total} steps compared (the rest follow a near tie)")
    # Ties closer than 4e-3 between logits spread over tens of units are rare: a guard that drops most steps
    # means the prompts no longer test anything.
    assert compared >= total // 2, (what, compared, total)
    return compared


def test_logits_match_transformers(our_forward, reference):
    for row, (ours, theirs) in enumerate(zip(our_forward, reference["logits"])):
        assert 1.0 < np.abs(theirs).max() <= MAX_ABS_LOGIT, row  # the scale TOL was derived for
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL, err_msg=f"row {row}")


def test_float32_forwards_are_within_tol_of_float64(transformers_model, our_forward, reference, prompts):
    exact = copy.deepcopy(transformers_model).double()
    for row in (3, 6):  # a short and the longest chat row
        ids = prompts[row] + reference["tokens"][row]
        with torch_threads(1), torch.no_grad():
            want = exact(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(our_forward[row], want, rtol=0, atol=TOL, err_msg=f"ours, row {row}")
        np.testing.assert_allclose(reference["logits"][row], want, rtol=0, atol=TOL,
                                   err_msg=f"transformers, row {row}")


def test_cached_greedy_decoding_equals_recomputing_and_transformers(smollm2, prompts, reference, our_forward):
    decoder = Decoder(smollm2.params, smollm2.config, kernels="xla")
    cached = [o.tokens for o in decoder.generate([GenerationRequest(prompt=p, max_new_tokens=NEW_TOKENS)
                                                  for p in prompts])]
    margins = reference["margins"]
    assert_same_greedy(cached, reference["tokens"], margins, "cached (XLA) vs transformers generate()")
    # Our full forward's argmax at each generated position is the recomputed greedy token: on a row equal to
    # the reference up to step k, position len(prompt) + k - 1 sees exactly the growing sequence.
    recomputed = [f[len(p) - 1:-1].argmax(-1).tolist() for p, f in zip(prompts, our_forward)]
    assert_same_greedy(recomputed, reference["tokens"], margins, "recomputed vs transformers generate()")
    assert_same_greedy(cached, recomputed, margins, "cached (XLA) vs recomputed")


def test_continuous_batching_gives_the_same_tokens(smollm2, prompts, reference):
    """Four slots, one request joining per 8-token chunk: rows at different positions share the cache (which
    grows for longer requests), and a finished request's slot is taken by the next one (kernels as the server
    chooses them)."""
    decoder = SlotDecoder(smollm2.params, smollm2.config, num_slots=4)
    pending = list(enumerate(prompts))
    owner, got = {}, {i: [] for i in range(len(prompts))}
    while pending or decoder.active_slots:
        if pending and decoder.free_slots:
            index, prompt = pending.pop(0)
            owner[decoder.admit([GenerationRequest(prompt=prompt, max_new_tokens=NEW_TOKENS)])[0]] = index
        for slot, out in decoder.step(8).items():
            got[owner[slot]] += out.tokens if isinstance(out, GenerationOutput) else out[0]
    assert_same_greedy([got[i] for i in range(len(prompts))], reference["tokens"], reference["margins"],
                       "continuous batching vs transformers generate()")


def test_reused_prompt_beginnings_give_the_same_tokens(smollm2, prompts, reference):
    """Prompts admitted one at a time with earlier prompts' beginnings kept (as the server does): the two chat
    prompts without a system message after the first reuse the template's tokens it left, and decode as
    transformers does."""
    decoder = SlotDecoder(smollm2.params, smollm2.config, num_slots=4, prefix_entries=None)
    got = []
    for prompt in prompts:
        slot = decoder.admit([GenerationRequest(prompt=prompt, max_new_tokens=NEW_TOKENS)])[0]
        tokens = []
        while decoder.active_slots:
            out = decoder.step(8)[slot]
            tokens += out.tokens if isinstance(out, GenerationOutput) else out[0]
        got.append(tokens)
    assert decoder.stats["prefix_learned_hits"] == 2 and decoder.stats["prefix_learned_tokens"] >= 2 * 20
    assert_same_greedy(got, reference["tokens"], reference["margins"], "reused beginnings vs transformers generate()")


def test_cpu_kernels_give_the_same_tokens(smollm2, prompts, reference):
    status = cpu_kernels.status()
    if not status.ok:
        pytest.skip(f"CPU decode kernels unavailable: {status.reason}")
    decoder = Decoder(smollm2.params, smollm2.config, kernels="cpu_kernel")
    got = [o.tokens for o in decoder.generate([GenerationRequest(prompt=p, max_new_tokens=NEW_TOKENS)
                                               for p in prompts])]
    assert_same_greedy(got, reference["tokens"], reference["margins"], "cached (CPU kernels) vs transformers")
