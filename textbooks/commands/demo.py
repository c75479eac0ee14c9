"""Run the phi-1.5 ablation end to end at CPU size: corpora -> curate -> teacher -> train 3 variants ->
evaluate -> report.

This is what `make demo` runs. Every stage is resumable: rerunning with the same --out skips finished stages.
The teacher stage serves SmolLM2-135M-Instruct on 127.0.0.1 unless --teacher names another OpenAI-compatible
endpoint (its API key, if any, from $OPENAI_API_KEY).

Examples:
  textbooks demo --out demo_out
  textbooks demo --out /tmp/quick --gin.DemoConfig.steps=50 --gin.DemoConfig.eval_limit=10
  textbooks demo --out demo_vllm --teacher http://127.0.0.1:8000/v1 --teacher_model Qwen/Qwen2.5-7B-Instruct
  textbooks demo --out /tmp/stand_ins --gin.DemoConfig.teacher=False
"""

NAME = "demo"
HELP = "run the CPU-size phi-1.5 ablation end to end and write a report"
ACCEPTS_EXTRA = True


def add_arguments(parser) -> None:
    from textbooks import gin_utils

    parser.add_argument("--out", default="demo_out", help="output folder (data, runs, eval, report.md)")
    parser.add_argument("--teacher", default=None, metavar="URL",
                        help="an OpenAI-compatible teacher endpoint (http://host:port/v1) instead of serving "
                             "SmolLM2-135M-Instruct here (same as --gin.TeacherConfig.endpoint)")
    parser.add_argument("--teacher_model", default=None, help="the model name at --teacher")
    gin_utils.add_gin_arguments(parser)


def main(args) -> int:
    import logging
    import sys

    from textbooks import demo, demo_teacher, gin_utils
    from textbooks.data import paths

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "jax._src.xla_bridge", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    gin_utils.parse_gin_from_args(args)
    config = demo.DemoConfig()  # gin-bound values apply here
    overrides = {k: v for k, v in (("endpoint", args.teacher), ("model", args.teacher_model)) if v}
    teacher = demo_teacher.TeacherConfig(**overrides)
    import gin

    gin.clear_config()
    try:
        demo.run_demo(paths.resolve(args.out), config, teacher)
    except demo_teacher.TeacherStageError as e:
        print(f"textbooks demo: error: {e}", file=sys.stderr)
        return 1
    return 0
