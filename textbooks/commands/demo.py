"""Run the phi-1.5 ablation end to end at CPU size: corpora -> curate -> train 3 variants -> evaluate -> report.

This is what `make demo` runs. Every stage is resumable: rerunning with the same --out skips finished stages.

Examples:
  textbooks demo --out demo_out
  textbooks demo --out /tmp/quick --gin.DemoConfig.steps=50 --gin.DemoConfig.eval_limit=10
"""

NAME = "demo"
HELP = "run the CPU-size phi-1.5 ablation end to end and write a report"
ACCEPTS_EXTRA = True


def add_arguments(parser) -> None:
    from textbooks import gin_utils

    parser.add_argument("--out", default="demo_out", help="output folder (data, runs, eval, report.md)")
    gin_utils.add_gin_arguments(parser)


def main(args) -> int:
    import logging

    from textbooks import demo, gin_utils
    from textbooks.data import paths

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "jax._src.xla_bridge", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    gin_utils.parse_gin_from_args(args)
    config = demo.DemoConfig()  # gin-bound values apply here
    import gin

    gin.clear_config()
    demo.run_demo(paths.resolve(args.out), config)
    return 0
