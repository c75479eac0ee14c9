"""Convert phi checkpoints between transformers' format and this project's.

  textbooks convert --from-hf HF_DIR --out DIR
      Imports a transformers PhiForCausalLM folder (config.json + safetensors, single or sharded) into the
      project's params format (textbooks_config.json + params.safetensors: our parameter tree, float32),
      read back with textbooks.model.load_params, or as a checkpoint by serve, eval and the trainer's
      INIT_FROM. A vocabulary the folder records comes along (its name and files).

  textbooks convert --to-hf --checkpoint PATH --out HF_DIR [--vocabulary NAME]
      Exports a model to transformers' format (float32) with its vocabulary's files (for 'phi' and
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

HELP = "convert phi checkpoints between transformers (HF) format and the project's params format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="HF_DIR", help="transformers checkpoint folder to import")
    direction.add_argument("--to-hf", action="store_true", help="export --checkpoint to transformers format")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="with --to-hf: params folder, transformers folder, or orbax model/step dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--scan-layers", action="store_true",
                        help="with --from-hf: record scan_layers=True in the written config")
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


def main(args: argparse.Namespace) -> int:
    from textbooks.data import paths
    from textbooks.model import hf, params_io

    try:
        from_hf, checkpoint = (paths.resolve(p) if p else None for p in (args.from_hf, args.checkpoint))
        out = paths.check_output_dir(args.out, "the output folder (--out)")
        if from_hf:
            if checkpoint:
                raise ValueError("--checkpoint goes with --to-hf; with --from-hf give the folder to --from-hf")
            from textbooks.model.vocab_files import recorded_vocabulary, save_tokenizer

            config, params = hf.load_hf_checkpoint(from_hf)
            vocabulary = recorded_vocabulary(from_hf)
            if args.scan_layers:
                config = config.replace(scan_layers=True)
            os.makedirs(out, exist_ok=True)
            if vocabulary is not None:
                vocabulary, _ = save_tokenizer(vocabulary, out, max_len=config.max_len)
            params_io.save_params(params, config, out, vocabulary=vocabulary)
            print(f"imported {from_hf} ({config.num_params():,} parameters, {config.num_layers} layers, "
                  f"width {config.hidden_size}; vocabulary {vocabulary or 'not recorded'}) -> {out}")
            return 0
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
              f"(transformers PhiForCausalLM, float32; {what})")
        note = transformers_note(out) if vocabulary else None
        if note:
            print(f"  {note}")
        return 0
    except (params_io.CheckpointError, ValueError, OSError) as e:
        print(f"textbooks convert: error: {e}", file=sys.stderr)
        return 2
