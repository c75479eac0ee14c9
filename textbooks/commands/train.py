r"""Train a phi model on a seqio mixture, T5X style.

Examples:

  textbooks train --gin_file=runs/pretrain.gin --gin_file=tiny/pretrain_tiny.gin \
      --gin.MIXTURE_OR_TASK_NAME="'phi15_spm8k'" --model_dir=/tmp/tiny
  textbooks train --gin_file=runs/pretrain.gin --gin_file=tiny/pretrain_tiny.gin --gin_file=tiny/synthetic.gin \
      --model_dir=/tmp/smoke                  (synthetic data: no corpus needed)
  textbooks train --gin_file=tiny/phi15_web.gin --model_dir=/tmp/phi15_web_tiny   (a paper run at CPU size)
  textbooks train --multihost --gin_file=phi15/phi15_web.gin --gin_file=tpu/phi15_v5e256.gin \
      --model_dir=gs://bucket/phi15_web       (the paper run, on every host of a TPU slice)

gin files are composed in order, then --gin.NAME=VALUE bindings (macros such as MIXTURE_OR_TASK_NAME,
TASK_FEATURE_LENGTHS, BATCH_SIZE, TRAIN_STEPS; --model_dir sets MODEL_DIR). Relative paths (--model_dir,
MODEL_DIR, INIT_FROM) are taken from the working directory and recorded absolute; gs:// paths are kept as they
are. A run resumes from the newest checkpoint in its model dir; SIGTERM or Ctrl-C saves a checkpoint and exits
0. Multi-host: pass --coordinator_address/--num_processes/--process_id (or $TEXTBOOKS_COORDINATOR_ADDRESS,
...), or --multihost to let JAX detect a TPU pod or SLURM cluster.
"""

from __future__ import annotations

import sys

HELP = "train a phi model with gin configs (T5X style); resumes from the model dir"
ACCEPTS_EXTRA = True

# The gin parameters that hold paths (usually bound to the MODEL_DIR and INIT_FROM macros).
MODEL_DIR_BINDING = "train.model_dir"
INIT_FROM_BINDING = "CheckpointConfig.init_from"  # a checkpoint path or a registered name
PATH_BINDINGS = (MODEL_DIR_BINDING, INIT_FROM_BINDING)


def add_arguments(parser) -> None:
    from textbooks import gin_utils  # deferred: keeps the CLI start fast

    gin_utils.add_gin_arguments(parser)
    parser.add_argument("--model_dir", default=None, help="the run's folder (sets the MODEL_DIR gin macro)")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process runs)")
    parser.add_argument("--num_processes", type=int, default=None, help="number of processes (multi-process runs)")
    parser.add_argument("--process_id", type=int, default=None, help="this process's index (multi-process runs)")
    parser.add_argument("--multihost", action="store_true",
                        help="call jax.distributed.initialize() with cluster auto-detection (TPU pods, SLURM)")
    parser.add_argument("--log_level", default="INFO", help="logging level (default INFO)")


def main(args) -> int:
    # Join the other processes before anything touches the devices.
    from textbooks import partitioning  # deferred: keeps the CLI start fast

    partitioning.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                                        auto=args.multihost)

    import gin

    # Importing the trainer registers every configurable its gin files bind (see textbooks.gin_utils).
    from textbooks import gin_utils  # deferred: keeps the CLI start fast
    from textbooks.data import paths  # deferred: keeps the CLI start fast
    from textbooks.train import trainer  # deferred: keeps the CLI start fast

    if not args.gin_file:
        print("textbooks train: give at least one --gin_file (e.g. --gin_file=runs/pretrain.gin)", file=sys.stderr)
        return 2
    bindings = [f"MODEL_DIR = {paths.resolve(args.model_dir)!r}"] if args.model_dir else []
    try:
        gin_utils.parse_gin_from_args(args, bindings, finalize=False)
        # MODEL_DIR and INIT_FROM may come from gin files or --gin flags: make them absolute before the config
        # is locked (orbax refuses relative paths; config.gin then names the same folders from anywhere).
        resolved = paths.resolve_gin_paths(PATH_BINDINGS, checkpoint_keys=(INIT_FROM_BINDING,))
        gin.finalize()
        if MODEL_DIR_BINDING in resolved:  # checked now, not at the first save after all the training steps
            paths.check_output_dir(resolved[MODEL_DIR_BINDING], "the model dir (train.model_dir, MODEL_DIR)")
    except (gin_utils.GinConfigError, ValueError) as e:  # finalizing reports unset %gin.REQUIRED as ValueError
        if "MODEL_DIR" in str(e) and "gin.REQUIRED" in str(e):
            print("textbooks train: no model dir: pass --model_dir=DIR (or bind MODEL_DIR in a gin file); the run's "
                  "checkpoints, metrics and config go there", file=sys.stderr)
        else:
            print(f"textbooks train: {e} (set it in a gin file or with --gin.NAME=VALUE)"
                  if "gin.REQUIRED" in str(e) else f"textbooks train: {e}", file=sys.stderr)
        return 2
    try:
        result = trainer.train()
    except trainer.NonFiniteLossError as e:
        print(f"textbooks train: {e}", file=sys.stderr)
        return 3
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"textbooks train: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "Required bindings" not in str(e):
            raise
        print(f"textbooks train: {e} (set them in a gin file or with --gin.NAME=VALUE)", file=sys.stderr)
        return 2
    print(f"textbooks train: {trainer.summary_line(result)}")
    return 0
