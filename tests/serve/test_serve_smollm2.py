"""`textbooks serve --checkpoint smollm2-135m-instruct`: the registered name is served under that name, and a
greedy chat completion equals transformers' greedy continuation of ``apply_chat_template(messages,
add_generation_prompt=True)`` on the same GGUF file, ending at <|im_end|> ('stop') or at max_tokens ('length')."""

import asyncio
import json
import os
import urllib.request

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from textbooks.data_packages import resolve_checkpoint
from textbooks.serve.client import OpenAIClient
from textbooks.serve.process import ServerProcess

pytestmark = pytest.mark.slow  # two loads of the model (the server's and transformers') and their compilation

NAME = "smollm2-135m-instruct"
MAX_TOKENS = 24
CONVERSATIONS = {
    "stop": [{"role": "user", "content": "What is the capital of France?"}],  # answered in a sentence
    "length": [{"role": "system", "content": "You are a storyteller."},
               {"role": "user", "content": "Tell me a long story about a dragon who learns to paint."}],
}
# Greedy tokens can differ between two float32 implementations only where the reference's top-2 logit margin
# is under 4e-3 (tests/model/test_smollm2.py derives it); the references here stay clear of that.
TIE_MARGIN = 4e-3

# The repository root (the server runs from it).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def served():
    """The server, started from the registered name alone (no vocabulary or model name given): 4 rows of
    continuous batching in 8-token chunks, so each answer spans several chunks."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    with ServerProcess.start(NAME, "--max_batch_size", "4", "--chunk_tokens", "8", "--min_length_bucket", "64",
                             "--no_warmup", timeout=300, cwd=REPO, env=env) as server:
        yield server.url


@pytest.fixture(scope="module")
def reference():
    """transformers' greedy answer to each conversation: (prompt ids, new ids without eos, finish reason, text)."""
    folder, name = os.path.split(resolve_checkpoint(NAME))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP spinning makes 2 threads several times slower on a busy 2-core machine
    try:
        for key, messages in CONVERSATIONS.items():
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                # The mask is explicit: the pad id is <|im_end|>, which the prompt contains.
                row = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=MAX_TOKENS, do_sample=False, num_beams=1,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
                new = row[0, len(ids):].tolist()
                logits = model(row).logits[0, len(ids) - 1:len(ids) - 1 + len(new)].numpy()
            top2 = np.sort(logits, axis=-1)[:, -2:]
            assert (top2[:, 1] - top2[:, 0]).min() > TIE_MARGIN, f"{key}: a near tie; pick another conversation"
            ended = tokenizer.eos_token_id in new
            new = new[:new.index(tokenizer.eos_token_id)] if ended else new
            out[key] = (ids, new, "stop" if ended else "length", tokenizer.decode(new, skip_special_tokens=True))
    finally:
        torch.set_num_threads(threads)
    assert tokenizer.eos_token == "<|im_end|>"
    return out


def test_models_lists_the_registered_name(served):
    with urllib.request.urlopen(served + "/v1/models", timeout=60) as resp:
        data = json.loads(resp.read())["data"]
    assert [m["id"] for m in data] == [NAME] and data[0]["max_model_len"] == 8192


async def _chats(url):
    async with OpenAIClient(url, NAME, api_key_env=None, concurrency=len(CONVERSATIONS), timeout=600,
                            max_retries=0) as client:
        answers = await asyncio.gather(*[client.chat(messages, max_tokens=MAX_TOKENS, temperature=0)
                                         for messages in CONVERSATIONS.values()])
    return dict(zip(CONVERSATIONS, answers))


def test_greedy_chat_completions_equal_transformers(served, reference):
    answers = asyncio.run(_chats(served))  # sent together: decoded in one continuously batched cache
    for key, answer in answers.items():
        prompt_ids, new, finish, text = reference[key]
        assert finish == key  # the conversations end as they are meant to (at <|im_end|> / at max_tokens)
        assert answer.text == text, key
        assert answer.finish_reason == finish, key
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(prompt_ids), len(new)), key
