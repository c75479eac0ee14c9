"""Generate synthetic textbooks, exercises or stories with a teacher model behind an OpenAI-compatible API.

Configured with gin, like training: bind ``generate.*`` in a gin file and override on the command line.

Examples:
  textbooks generate --gin_file=synth/code_textbooks.gin \\
      --gin.generate.endpoint="'http://127.0.0.1:8000/v1'" --gin.generate.output_dir="'runs/code_tb'"
  textbooks generate --gin_file=synth/exercises.gin --gin.generate.num_samples=5000

Rerunning the same command resumes: finished prompts are skipped, answers already paid for come from the
cache. The run folder gets the prompt manifest, part files, shards per role, a diversity report and the
operative gin config (config.gin).

Exit status: 0 when every prompt has a completion, 3 when some failed (listed in failures.jsonl; rerun to retry
them), 2 for a configuration error (gin, templates, topics), 1 when the run had to stop (endpoint unreachable,
refused credentials or model, too many failures, a folder used by another process).
"""

from __future__ import annotations

import os
import sys

HELP = "generate synthetic data with a teacher LLM (gin-configured, resumable)"
ACCEPTS_EXTRA = True


def add_arguments(parser) -> None:
    from textbooks import gin_utils  # deferred: keeps the CLI start fast

    gin_utils.add_gin_arguments(parser)
    parser.add_argument("--log_level", default="WARNING", help="logging level (DEBUG shows every retry)")


def main(args) -> int:
    # deferred: keeps the CLI start fast (importing generate registers every configurable its gin files bind,
    # the curation modules' included)
    import gin

    from textbooks import gin_utils
    from textbooks.serve import client
    from textbooks.synth import generate as generate_lib
    from textbooks.synth import completions, templates, topics

    try:
        gin_utils.parse_gin_from_args(args)
        result = generate_lib.generate()
    except (gin_utils.GinConfigError, templates.TemplateError, topics.TopicError, completions.RunError,
            client.ClientError, ValueError, FileNotFoundError) as e:
        print(f"textbooks generate: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (gin_utils.GinConfigError, templates.TemplateError, topics.TopicError)) else 1
    except RuntimeError as e:  # gin: a gin.REQUIRED argument without a binding.
        if "Required bindings" not in str(e):
            raise
        print(f"textbooks generate: error: {e}; bind them in a gin file or with --gin.generate.NAME=VALUE "
              f"(see experiments/synth/*.gin)", file=sys.stderr)
        return 2
    out = result["output_dir"]
    with open(os.path.join(out, "config.gin"), "w", encoding="utf-8") as f:
        f.write(gin.operative_config_str())
    return 0 if result["run"]["remaining"] == 0 else 3
