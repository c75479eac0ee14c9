"""Convert checkpoints between transformers' format, GGUF files and this project's.

  textbooks convert --from-hf HF_DIR --out DIR
      Imports a transformers folder (PhiForCausalLM, LlamaForCausalLM or Qwen2ForCausalLM; config.json +
      safetensors, single or sharded) into the project's params format (textbooks_config.json +
      params.safetensors: our parameter tree, float32), read back with textbooks.model.load_params, or as a
      checkpoint by serve, eval and the trainer's INIT_FROM. A vocabulary the folder records comes along (its
      name and files); a Llama-family folder that records none brings its own tokenizer.json.

  textbooks convert --from-gguf FILE --out DIR
      Imports a GGUF file (llama or qwen2; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K or Q6_K tensors, dequantized
      to float32) the same way, with its tokenizer (tokenizer.json + tokenizer_config.json with the chat
      template). FILE may be a registered name such as smollm2-135m-instruct.

  textbooks convert --to-hf --checkpoint PATH --out HF_DIR [--vocabulary NAME]
      Exports a model to transformers' format (float32; PhiForCausalLM or LlamaForCausalLM by the model's
      family) with its vocabulary's files (for 'phi' and
      SentencePiece vocabularies a tokenizer.json that transformers' AutoTokenizer reads with the project's
      ids, plus the SentencePiece model file; a SentencePiece model that cannot be converted exactly gets no
      tokenizer.json, and the reason is printed; see textbooks.model.vocab_files). PATH may be a params folder
      written by this command, a transformers folder, or a training run's orbax checkpoint (model dir or one
      step). The vocabulary is the checkpoint's own (a params folder imported from a folder that recorded
      none has none: give --vocabulary to add one).

Nothing is written unless the whole input loads and matches its config. Relative paths are taken from the
working directory.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "convert checkpoints between transformers (HF) format, GGUF files and the project's params format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="HF_DIR", help="transformers checkpoint folder to import")
    direction.add_argument("--from-gguf", metavar="FILE",
                           help="GGUF file (or registered name, e.g. smollm2-135m-instruct) to import")
    direction.add_argument("--to-hf", action="store_true", help="export --checkpoint to transformers format")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="with --to-hf: params folder, transformers folder, or orbax model/step dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--scan-layers", action="store_true",
                        help="with --from-hf/--from-gguf: record scan_layers=True in the written config")
    parser.add_argument("--eos-id", type=int, default=None,
                        help="with --to-hf: eos_token_id for config.json (default: the checkpoint's vocabulary's)")
    parser.add_argument("--bos-id", type=int, default=None, help="with --to-hf: bos_token_id for config.json")
    parser.add_argument("--vocabulary", default=None, metavar="NAME",
                        help="with --to-hf: vocabulary whose files to write (phi, spm8k, spm:PATH; default: the "
                             "checkpoint's)")
    parser.add_argument("--max-shard-gb", type=float, default=5.0,
                        help="with --to-hf: split weights into shards of at most this many GB (default 5)")


def load_any(path: str):
    """Loads ``(config, params, vocabulary name or None)`` from a params folder, an HF folder or an orbax
    checkpoint (a params folder imported from a transformers folder that recorded none has none).

    Raises:
        CheckpointError: ``path`` is none of these or cannot be read.
    """
    # deferred: keeps the CLI start fast
    from textbooks.model import params_io
    from textbooks.model.load import load_model
    from textbooks.model.vocab_files import recorded_vocabulary

    if not os.path.exists(path):
        raise params_io.CheckpointError(f"{path} does not exist")
    if params_io.is_params_dir(path):
        config, params = params_io.load_params(path)
        return config, params, recorded_vocabulary(path)
    loaded = load_model(path)
    return loaded.config, loaded.params, loaded.vocabulary_name


def _import(source: str, out: str, *, gguf_file: bool, scan_layers: bool) -> int:
    """Reads a transformers folder or a GGUF file (weights and vocabulary) and only then writes ``out``."""
    from textbooks.model import gguf, hf, params_io
    from textbooks.model.vocab_files import own_vocabulary, save_tokenizer
    from textbooks.vocab.registry import get_vocabulary

    if gguf_file:
        if not os.path.isfile(source):
            raise params_io.CheckpointError(f"{source} is not a file (--from-gguf takes a .gguf file)")
        config, params = gguf.load_gguf_checkpoint(source)
        vocabulary = f"gguf:{source}"
    else:
        config, params = hf.load_hf_checkpoint(source)
        vocabulary = own_vocabulary(source)
    if vocabulary is not None:
        vocab = get_vocabulary(vocabulary)  # a tokenizer that cannot be built fails here, before any write
        if int(vocab.vocab_size) > config.vocab_size:
            raise params_io.CheckpointError(
                f"{source}: its vocabulary ({vocabulary}) has {vocab.vocab_size} tokens but the model only "
                f"{config.vocab_size} embedding rows: the tokenizer does not belong to these weights")
    if scan_layers:
        config = config.replace(scan_layers=True)
    os.makedirs(out, exist_ok=True)
    if vocabulary is not None:
        vocabulary, _ = save_tokenizer(vocabulary, out, max_len=config.max_len)
    params_io.save_params(params, config, out, vocabulary=vocabulary)
    print(f"imported {source} ({config.family}, {config.num_params():,} parameters, {config.num_layers} layers, "
          f"width {config.hidden_size}; vocabulary {vocabulary or 'not recorded'}) -> {out}")
    return 0


def main(args: argparse.Namespace) -> int:
    from textbooks.data import paths
    from textbooks import data_packages
    from textbooks.model import hf, params_io

    try:
        from_gguf = data_packages.resolve_checkpoint(args.from_gguf) if args.from_gguf else None
        checkpoint = data_packages.resolve_checkpoint(args.checkpoint) if args.checkpoint else None
        from_hf, from_gguf, checkpoint = (paths.resolve(p) if p else None
                                          for p in (args.from_hf, from_gguf, checkpoint))
        out = paths.check_output_dir(args.out, "the output folder (--out)")
        source = from_hf or from_gguf
        if source:
            if checkpoint:
                raise ValueError("--checkpoint goes with --to-hf; with --from-hf/--from-gguf give the source there")
            return _import(source, out, gguf_file=bool(from_gguf), scan_layers=args.scan_layers)
        if not checkpoint:
            raise ValueError("--to-hf needs --checkpoint PATH (params folder, transformers folder or orbax dir)")
        from textbooks.model.vocab_files import save_tokenizer, transformers_note
        from textbooks.vocab.registry import get_vocabulary

        config, params, vocabulary = load_any(checkpoint)
        vocabulary = args.vocabulary or vocabulary
        eos_id = args.eos_id
        if vocabulary is not None:
            vocab = get_vocabulary(vocabulary)  # an unknown name fails here, before anything is written
            if int(vocab.vocab_size) > config.vocab_size:
                raise ValueError(f"vocabulary {vocabulary!r} has {vocab.vocab_size} tokens but the model only "
                                 f"{config.vocab_size} embedding rows; give the model's own with --vocabulary")
            if eos_id is None and getattr(vocab, "eos_id", None) is not None:
                eos_id = int(vocab.eos_id)
        max_bytes = int(args.max_shard_gb * 1e9) if args.max_shard_gb and args.max_shard_gb > 0 else None
        os.makedirs(out, exist_ok=True)
        recorded, files = save_tokenizer(vocabulary, out, max_len=config.max_len) if vocabulary else (None, [])
        hf.save_hf_checkpoint(params, config, out, max_shard_bytes=max_bytes, bos_token_id=args.bos_id,
                              eos_token_id=eos_id, vocabulary=recorded)
        what = (f"vocabulary {vocabulary}: {', '.join(files)}" if vocabulary else
                "no vocabulary: the params folder records none; add one with --vocabulary")
        print(f"exported {checkpoint} ({config.num_params():,} parameters) -> {out} "
              f"(transformers {hf.config_to_hf(config)['architectures'][0]}, float32; {what})")
        note = transformers_note(out) if vocabulary else None
        if note:
            print(f"  {note}")
        return 0
    except (params_io.CheckpointError, ValueError, OSError) as e:
        print(f"textbooks convert: error: {e}", file=sys.stderr)
        return 2
