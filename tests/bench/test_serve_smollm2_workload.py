"""The smollm2 serve workload's chats: seeded, of the asked sizes, alternating with and without a system prompt."""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from bench import serve_smollm2, serve_throughput  # noqa: E402


def test_chats_are_seeded_and_within_the_asked_sizes():
    args = argparse.Namespace(chat_requests=12, chat_prompt_chars=[40, 200], chat_new_tokens=[16, 32])
    chats = serve_smollm2.make_chats(args)
    assert chats == serve_smollm2.make_chats(args) and len(chats) == 12
    for i, (messages, max_tokens) in enumerate(chats):
        assert [m["role"] for m in messages] == (["system", "user"] if i % 2 else ["user"])
        task, excerpt = messages[-1]["content"].split("\n\n", 1)
        assert task == serve_smollm2.CHAT_TASKS[i % len(serve_smollm2.CHAT_TASKS)]
        assert 40 <= len(excerpt) <= 200 and 16 <= max_tokens <= 32
    # The CLI runs this workload by name.
    assert serve_throughput.make_chats is serve_smollm2.make_chats and serve_throughput.SMOLLM2 == serve_smollm2.SMOLLM2
