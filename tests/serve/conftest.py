"""Fixtures for the serving tests: a CPU-size checkpoint and a `textbooks serve` process serving it."""

import os
import sys
import sysconfig

import pytest

from textbooks.serve.process import ServerProcess, stop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fault_server


def _spm_model(tmp) -> tuple[str, str]:
    """(vocabulary name for `serve`, SentencePiece model file): spm8k when it exists, else a small one trained here."""
    try:
        from textbooks.vocab.spm import spm8k_path

        path = spm8k_path()
        return "spm8k", path
    except (ImportError, FileNotFoundError):
        pass
    from textbooks.vocab.spm import train_spm

    stdlib = sysconfig.get_paths()["stdlib"]
    files = [os.path.join(stdlib, f) for f in ("textwrap.py", "string.py", "argparse.py", "json/decoder.py")]
    path = train_spm(str(tmp / "spm"), files, vocab_size=1024)
    return f"spm:{path}", path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random-init phi-cpu-1m exported in transformers format, with a vocabulary of the same size."""
    import sentencepiece as spm

    from textbooks.model.config import get_preset
    from textbooks.model.hf import save_hf_checkpoint
    from textbooks.model.causal_lm import init_params

    tmp = tmp_path_factory.mktemp("serve_ckpt")
    vocab_name, model_file = _spm_model(tmp)
    processor = spm.SentencePieceProcessor(model_file=model_file)
    config = get_preset("phi-cpu-1m").replace(vocab_size=processor.get_piece_size())
    ckpt = tmp / "phi-tiny"
    save_hf_checkpoint(init_params(config, 0), config, str(ckpt), eos_token_id=processor.eos_id())
    return {"dir": str(ckpt), "vocabulary": vocab_name, "processor": processor, "config": config}


def start_server(checkpoint: dict, *extra: str, timeout: float = 300.0):
    """Starts `textbooks serve` on a free loopback port; returns (process, base URL)."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    server = ServerProcess.start(checkpoint["dir"], "--vocabulary", checkpoint["vocabulary"], "--model_name",
                                 "phi-tiny", *extra, timeout=timeout, cwd=REPO, env=env)
    return server.proc, server.url


def stop_server(proc) -> None:
    stop(proc, grace_s=30)


@pytest.fixture(scope="session")
def served(tiny_checkpoint):
    """`textbooks serve` for the tiny checkpoint: batches of 4 rows, 16-token chunks, one length bucket."""
    proc, url = start_server(tiny_checkpoint, "--max_batch_size", "4", "--fixed_batch", "--chunk_tokens", "16",
                             "--min_length_bucket", "128", "--batch_wait_ms", "30")
    yield {"url": url, "proc": proc, **tiny_checkpoint}
    stop_server(proc)
