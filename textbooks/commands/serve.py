"""Serve a checkpoint over an OpenAI-compatible HTTP API (completions, chat completions, streaming).

The server binds to 127.0.0.1 unless told otherwise and batches concurrent requests into KV-cache decoding.
Any OpenAI-compatible client works, including `textbooks generate` (as a local teacher for smoke runs):

  textbooks serve --checkpoint runs/phi-cpu-7m/checkpoints --port 8000
  curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "checkpoints", "prompt": "def fib(n):", "max_tokens": 32}'

A relative --checkpoint is taken from the working directory. With --port 0 a free port is picked; the first
line on stdout says where the server listens. Gin flags configure what the flags do not, e.g. what is compiled
before the server listens:

  textbooks serve --checkpoint smollm2-135m-instruct --gin.WarmupConfig.prompt_tokens=256
"""

from __future__ import annotations

import asyncio
import signal
import sys

from textbooks import data_packages

HELP = "serve a checkpoint over an OpenAI-compatible HTTP API"
ACCEPTS_EXTRA = True


def add_arguments(parser) -> None:
    from textbooks import gin_utils  # deferred: keeps the CLI start fast

    gin_utils.add_gin_arguments(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="orbax model dir (newest step), one step dir, a transformers-format or params folder, "
                             "a .gguf file, or a registered name (smollm2-135m-instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: pick a free one)")
    parser.add_argument("--vocabulary", default=None,
                        help="vocabulary name overriding the checkpoint's (phi, spm8k, spm:PATH, hf:PATH, gguf:PATH)")
    parser.add_argument("--model_name", default=None,
                        help="name served at /v1/models (default: the registered name, or the folder or file name)")
    parser.add_argument("--max_batch_size", type=int, default=16, help="most requests decoded together")
    parser.add_argument("--batch_wait_ms", type=float, default=5.0,
                        help="how long a request waits for others to share its batch")
    parser.add_argument("--chunk_tokens", type=int, default=32,
                        help="continuous batching: most tokens decoded per scheduler step (streaming granularity; a "
                             "step also ends when a request finishes and others wait, and runs on until one finishes "
                             "while every row is taken by a request that neither streams nor has stop strings); 0: "
                             "static batches, whole completions per call")
    parser.add_argument("--max_queue", type=int, default=1024, help="most waiting requests before 429s")
    parser.add_argument("--fixed_batch", action="store_true",
                        help="pad every batch to --max_batch_size rows (one compiled batch shape)")
    parser.add_argument("--min_length_bucket", type=int, default=16,
                        help="smallest prompt/cache length bucket (larger: fewer compilations, more padding)")
    parser.add_argument("--kernels", default="auto", choices=("auto", "xla", "cpu_kernel"),
                        help="decode steps' attention and weight products: the compiled CPU kernels when available "
                             "(auto), XLA ops, or the kernels or an error")
    parser.add_argument("--no_pack_weights", action="store_true",
                        help="with the CPU product kernel, keep one copy of the weights (default: decode steps read "
                             "a second copy packed for the kernel, about 1.5x faster at 16 rows)")
    parser.add_argument("--prompt_prefix", action="append", default=None, metavar="TEXT",
                        help="continuous batching: a prompt beginning to prefill once, so that prompts starting with "
                             "its tokens prefill only their rest (repeatable; default: the chat template's fixed "
                             "beginning, e.g. a default system prompt)")
    parser.add_argument("--no_prompt_prefix", action="store_true",
                        help="prefill every prompt whole (no prompt beginning is prefilled once or kept and reused)")
    parser.add_argument("--prefix_cache_entries", type=int, default=None, metavar="N",
                        help="continuous batching: most beginnings of earlier prompts (their first 64 tokens' keys "
                             "and values) kept so that later prompts starting alike prefill only their rest, least "
                             "recently used dropped first (default: as many as ~100 MB hold; 0: only the fixed "
                             "prefixes)")
    parser.add_argument("--no_warmup", action="store_true", help="skip compiling before listening")
    parser.add_argument("--log_level", default="WARNING",
                        help="logging level (default WARNING; INFO logs each request and batch)")


def main(args) -> int:
    # deferred: keeps the CLI start fast
    from textbooks import gin_utils
    from textbooks.data import paths
    from textbooks.serve import engine as engine_lib
    from textbooks.serve import server

    try:
        gin_utils.parse_gin_from_args(args)
    except gin_utils.GinConfigError as e:
        print(f"textbooks serve: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host}: the server has no authentication", file=sys.stderr)
    try:
        registered = args.checkpoint in data_packages.NAMED_CHECKPOINTS
        checkpoint = paths.resolve(data_packages.resolve_checkpoint(args.checkpoint))
        engine = engine_lib.load_engine(checkpoint, vocabulary=args.vocabulary,
                                        model_name=args.model_name or (args.checkpoint if registered else None),
                                        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                                        chunk_tokens=args.chunk_tokens, max_queue=args.max_queue,
                                        fixed_batch=args.fixed_batch, min_length_bucket=args.min_length_bucket,
                                        kernels=args.kernels, pack_weights=not args.no_pack_weights,
                                        prompt_prefixes=[] if args.no_prompt_prefix else args.prompt_prefix,
                                        prefix_cache_entries=0 if args.no_prompt_prefix else args.prefix_cache_entries)
    except (FileNotFoundError, ValueError) as e:
        print(f"textbooks serve: error: {e}", file=sys.stderr)
        return 2
    if not args.no_warmup:
        engine.warmup()

    def ready(url: str) -> None:
        print(f"kernels: {engine.decoder.kernels} ({engine.decoder.kernels_reason})", file=sys.stderr,
              flush=True)
        print(f"serving {engine.model_name} on {url}", flush=True)

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await server.serve(engine, args.host, args.port, ready=ready)
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(run())
    except OSError as e:
        print(f"textbooks serve: error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0
