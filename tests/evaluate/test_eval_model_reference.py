"""Multiple-choice log-likelihoods agree with transformers' PhiForCausalLM running our exported weights."""

import numpy as np
import pytest

from textbooks.evaluate import benchmarks, multiple_choice, prompts

TASKS = {"piqa": 4, "hellaswag": 4, "arc_easy": 4, "winogrande": 4, "boolq": 3, "siqa": 3, "mmlu": 3,
         "openbookqa": 3}


@pytest.fixture(scope="module")
def reference(tiny_config, tiny_params, tmp_path_factory):
    import torch
    import transformers
    from textbooks.model import hf

    path = str(tmp_path_factory.mktemp("hf_ref"))
    hf.save_hf_checkpoint(tiny_params, tiny_config, path)
    model = transformers.PhiForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small forward at a time: extra threads only contend on a shared machine
    yield torch, model
    torch.set_num_threads(threads)


def _reference_loglikelihood(torch, model, ctx, cont, max_len):
    whole = (list(ctx) + list(cont))[-(max_len + 1):]
    n = min(len(cont), len(whole) - 1)
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    targets = whole[1:]
    positions = range(len(targets) - n, len(targets))
    return float(sum(logp[t, targets[t]] for t in positions))


def test_multiple_choice_scores_match_transformers(tiny_model, reference):
    torch, ref = reference
    items = [it for task, n in TASKS.items() for it in benchmarks.load_benchmark(task, limit=n, seed=11)]
    requests, spans = [], []
    for item in items:
        reqs = prompts.choice_requests(item)
        spans.append((len(requests), len(reqs)))
        requests += reqs
    ours = tiny_model.loglikelihood(requests)
    pairs = tiny_model.encode_pairs(requests)
    theirs = [_reference_loglikelihood(torch, ref, c, x, tiny_model.max_len) for c, x in pairs]
    diffs = np.abs(np.array([o.logprob for o in ours]) - np.array(theirs))
    assert diffs.max() < 1e-3, f"max |ll difference| {diffs.max():.2e}"
    for item, (start, n) in zip(items, spans):
        a = int(np.argmax([ours[start + j].logprob for j in range(n)]))
        b = int(np.argmax(theirs[start:start + n]))
        assert a == b, f"{item['id']}: we choose {a}, transformers chooses {b}"
    assert any(o.truncated for o in ours), "the sample should include prompts longer than the model (MMLU 2-shot)"


def test_score_items_reports_the_same_decisions_as_the_reference(tiny_model, reference):
    torch, ref = reference
    items = benchmarks.load_benchmark("arc_challenge", limit=8, seed=5)
    result = multiple_choice.score_items(tiny_model, items)
    for item, rec in zip(items, result.items):
        reqs = prompts.choice_requests(item)
        lls = [_reference_loglikelihood(torch, ref, c, x, tiny_model.max_len) for c, x in tiny_model.encode_pairs(reqs)]
        expected = multiple_choice.mc_decisions(lls, item["gold"], [len(c) for c in item["choices"]])
        assert (rec["pred"], rec["pred_norm"]) == (expected["pred"], expected["pred_norm"])
        probs = np.exp(np.array(lls) - max(lls))
        assert rec["p_correct"] == pytest.approx(probs[item["gold"]] / probs.sum(), abs=1e-4)


def test_context_continuation_tokenization_is_lm_eval_style(tiny_model):
    requests = [("Question: why?\nAnswer:", " because"), ("A sentence ending in a space ", "word"), ("", " alone")]
    pairs = tiny_model.encode_pairs(requests)
    # The pieces concatenate to the tokenization of the whole string (trailing context spaces move over).
    assert pairs[0][0] + pairs[0][1] == tiny_model.encode("Question: why?\nAnswer: because")
    assert pairs[1][0] == tiny_model.encode("A sentence ending in a space")
    assert pairs[1][0] + pairs[1][1] == tiny_model.encode("A sentence ending in a space word")
    # An empty context is the end-of-text token.
    assert pairs[2] == ([tiny_model.eos_id], tiny_model.encode(" alone"))


def test_batching_does_not_change_scores(tiny_model, tiny_config, tiny_params):
    from textbooks.evaluate.lm import EvalModel

    requests = [prompts.choice_requests(it)[0] for it in benchmarks.load_benchmark("piqa", limit=12, seed=2)]
    small = EvalModel(tiny_config, tiny_params, tiny_model.vocabulary, tokens_per_batch=64)
    a = [r.logprob for r in small.loglikelihood(requests)]
    b = [r.logprob for r in tiny_model.loglikelihood(requests)]
    assert np.allclose(a, b, atol=1e-4)
    assert len(small.compiled_shapes) >= 1 and all(rows % small.data_parallel == 0 for rows, _, _ in small.compiled_shapes)
