"""The headline phi-1.5 ablation end to end at CPU size: what ``make demo`` runs.

Stages, each resumable (a finished stage is skipped on a rerun with the same output folder):

1. ``corpora``: real local text for every data role (``textbooks corpora``), stand-ins named.
2. ``curate``: an educational-value classifier (MiniLM embeddings + logistic head, DCLM-style reference labels)
   trained on the local corpora, then ``web_raw`` curated into ``web_filtered`` on Apache Beam's DirectRunner
   (heuristics, exact + MinHash dedup, 13-gram decontamination, the classifier).
3. ``teacher``: a real teacher LLM (SmolLM2-135M-Instruct served on 127.0.0.1, or ``--teacher URL``) writes
   ``synthetic_textbooks``, ``code_textbooks`` and ``code_exercises``, which replace the corpora's stand-ins
   (:mod:`textbooks.demo_teacher`).
4. ``train``: the three phi-1.5 variants on identical settings: ``phi15`` (synthetic textbooks + phi-1 code),
   ``phi15_web_only`` (filtered web + code) and ``phi15_web`` (40% web / 20% code / 40% synthetic). Every
   variant's validation loss is measured on one common held-out set: the validation split of every role.
5. ``evaluate``: loss and bits per byte of the common held-out set per role (identical documents for every
   variant, checked by their fingerprints) and the multiple-choice part of the phi-1.5 suite with its
   continuous metrics (bits per byte of the gold answer, probability of the correct choice) on a seeded subset
   of items.
6. ``report``: ``report.md`` with the teacher's statistics and samples, loss curves, held-out losses, realized
   token proportions, benchmark table and samples, plus PNG plots and ``report.json``.

Every figure is measured in the run; nothing is copied from the papers. At this size benchmark accuracies sit at
chance, which the report says; the per-component losses and continuous metrics are what separate the variants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from typing import Any, Sequence

import gin

from mixtures import factory  # importing the package registers the tasks and mixtures
from textbooks import demo_report, demo_teacher, gin_utils
from textbooks.compilation_cache import use_compilation_cache
from textbooks.corpora import build as corpora_build
from textbooks.curate import pipeline as curate_pipeline
from textbooks.curate import training
from textbooks.data.manifest import read_manifest
from textbooks.evaluate import component_loss, suite
from textbooks.evaluate.lm import EvalModel
from textbooks.model.config import model_config
from textbooks.model.decode import generate
from textbooks.model.load import load_model
from textbooks.train import checkpoints, hooks, optimizer, trainer
from textbooks.vocab import PHI_PADDED_VOCAB_SIZE, SPM8K_VOCAB_SIZE

log = logging.getLogger(__name__)

VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("synthetic", "phi15", "80% synthetic textbooks + 20% phi-1 code"),
    ("web_only", "phi15_web_only", "80% filtered web + 20% filtered code"),
    ("web_synthetic", "phi15_web", "40% filtered web + 20% phi-1 code + 40% synthetic textbooks"),
)
# The common held-out set: the validation split of every role any variant trains on, plus the exercises.
HELDOUT_ROLES = ("code_exercises", "code_filtered", "code_textbooks", "synthetic_textbooks", "web_filtered")
HELDOUT_MIXTURE = "demo_heldout"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (gin: ``DemoConfig.steps = 600`` etc.).

    Attributes:
        preset: model preset of the three runs.
        vocabulary: vocabulary of data and model ('spm8k' keeps the embedding small at CPU size).
        steps: training steps per variant.
        batch_size: sequences per step.
        seq_len: tokens per sequence.
        learning_rate: peak learning rate (linear warmup, cosine decay: short runs need a schedule).
        eval_every: steps between per-component validation losses.
        eval_batches: validation batches per per-component loss.
        eval_tasks: benchmark tasks or suites for the final evaluation.
        eval_limit: items per benchmark task (seeded subset).
        classifier_docs: documents per class for the educational-value classifier.
        classifier_max_length: MiniLM tokens per document (the classifier stage embeds every web document).
        classifier_threshold: keep web documents whose classifier probability of "textbook-like" is at least
            this. The reference positives (Python documentation prose) are far from any web page, so the
            default 0.5 keeps almost nothing; 0.1 keeps about a quarter of what passes the heuristics, close
            to the share of code phi-1 kept (about 6B of 35B tokens).
        curate: run the curation stage (otherwise web_filtered is the corpora's heuristic selection).
        curate_workers: Beam DirectRunner worker processes of the curation stage; 1 runs the pipeline in this
            process (in_memory), which is quicker for small inputs.
        teacher: run the teacher stage (``TeacherConfig.*`` sizes it); otherwise the synthetic roles keep the
            corpora's stand-ins, and the report says so.
        heldout_docs: most validation documents per role in the common held-out set.
        corpora_max_docs: records (chunks) per data role in the local corpora; None for all of them. Small
            values make every later stage fast (curation reads all of ``web_raw``; token statistics read
            every role).
        sample_tokens: new tokens per sampled continuation in the report.
        compilation_cache: keep XLA's compiled programs in ``OUT/jax_cache`` (JAX's persistent compilation
            cache): the three variants train and are scored by the same programs, so only the first compiles
            them, and a rerun compiles nothing. An explicit ``jax_compilation_cache_dir`` wins.
        seed: one seed for everything.
    """

    preset: str = "phi-cpu-7m"
    vocabulary: str = "spm8k"
    steps: int = 170
    batch_size: int = 8
    seq_len: int = 256
    learning_rate: float = 2e-3
    eval_every: int = 100
    eval_batches: int = 4
    eval_tasks: str = "multiple_choice"
    eval_limit: int = 40
    classifier_docs: int = 400
    classifier_max_length: int = 128
    classifier_threshold: float = 0.1
    curate: bool = True
    curate_workers: int = 2
    teacher: bool = True
    heldout_docs: int = 64
    corpora_max_docs: int | None = None
    sample_tokens: int = 48
    compilation_cache: bool = True
    seed: int = 0

    def __post_init__(self):
        sizes = {"steps": self.steps, "batch_size": self.batch_size, "seq_len": self.seq_len,
                 "eval_batches": self.eval_batches, "curate_workers": self.curate_workers,
                 "heldout_docs": self.heldout_docs,
                 "corpora_max_docs": 1 if self.corpora_max_docs is None else self.corpora_max_docs}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"DemoConfig: {', '.join(f'{k}={v}' for k, v in bad.items())} must be at least 1; "
                             f"set --gin.DemoConfig.<name>=<positive number>")


def _stage(name: str, index: int, total: int = 6) -> None:
    print(f"\n=== [{index}/{total}] {name} ===", flush=True)


def _done_marker(path: str) -> str:
    return os.path.join(path, ".done")


def _is_done(path: str) -> bool:
    return os.path.exists(_done_marker(path))


def _mark_done(path: str, payload: dict | None = None) -> None:
    os.makedirs(path, exist_ok=True)
    with open(_done_marker(path), "w") as f:
        json.dump(payload or {}, f)


def build_data(data_root: str, max_docs: int | None = None) -> list[dict]:
    """Builds the local corpora into ``data_root`` (skipped when already built), at most ``max_docs`` records
    per role; returns per-role summaries."""
    marker_dir = os.path.join(data_root, ".corpora")
    if not _is_done(marker_dir):
        results = corpora_build.build_corpora(data_root, max_docs=max_docs, verbose=True)
        print(corpora_build.summary_table(results), flush=True)
        _mark_done(marker_dir)
    summary = []
    for role in sorted(os.listdir(data_root)):
        manifest_path = os.path.join(data_root, role, "manifest.json")
        if not os.path.exists(manifest_path):
            continue
        m = read_manifest(os.path.join(data_root, role))
        summary.append({"role": role, "stand_in": getattr(m, "stand_in", None),
                        "splits": {s: getattr(st, "num_records", None) for s, st in m.splits.items()}})
    return summary


def curate_web(data_root: str, work_dir: str, config: DemoConfig) -> dict:
    """Trains the educational-value classifier and curates web_raw into web_filtered (skipped when done)."""
    out = os.path.join(work_dir, "curation")
    if _is_done(out):
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)
    classifier_dir = os.path.join(out, "classifier")
    gin.clear_config()
    gin_utils.parse_gin(["curate/train_edu_classifier_web.gin"],
                        [f"train_classifier.output_dir = '{classifier_dir}'",
                         f"train_classifier.max_docs_per_class = {config.classifier_docs}",
                         f"EncoderSpec.max_length = {config.classifier_max_length}"])
    classifier = training.train_classifier()
    gin.clear_config()
    gin_utils.parse_gin(["curate/web.gin"],
                        [f"EDU_WEB_CLASSIFIER = '{classifier_dir}'",
                         f"curate.output_dir = '{os.path.join(data_root, 'web_filtered')}'",
                         "curate.overwrite = True",
                         f"curate.direct_num_workers = {config.curate_workers}",
                         "curate.direct_running_mode = "
                         f"'{'in_memory' if config.curate_workers == 1 else 'multi_processing'}'",
                         f"ClassifierStageConfig.threshold = {config.classifier_threshold}"])
    report = curate_pipeline.curate()
    gin.clear_config()
    summary = {"classifier": classifier if isinstance(classifier, dict) else str(classifier),
               "report": {k: report.get(k) for k in ("reconciliation", "paths", "stages") if k in report}}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    _mark_done(out)
    return summary


def heldout_roles(data_root: str) -> tuple[str, ...]:
    """The roles of the common held-out set that have a validation split in ``data_root``."""
    return tuple(r for r in HELDOUT_ROLES
                 if any(f.startswith("validation-") for f in os.listdir(os.path.join(data_root, r)))
                 ) if os.path.isdir(data_root) else ()


def register_heldout(roles: Sequence[str], vocabulary: str) -> str:
    """Registers the validation mixture every variant is scored on during training (once per roles and
    vocabulary, whose names its name carries): equal weights over ``roles``; the trainer's eval hook reads the
    same first batches of each role's validation split."""
    import seqio

    name = f"{HELDOUT_MIXTURE}_{re.sub(r'[^A-Za-z0-9_]', '_', vocabulary)}_" + hashlib.sha256("\0".join(sorted(roles)).encode()).hexdigest()[:8]
    if name not in seqio.MixtureRegistry.names():
        factory.register_mixture({r: 1.0 for r in roles}, name=name, vocabulary=vocabulary)
    return name


def data_signature(data_root: str) -> str:
    """A digest of every role's manifest: the data a variant trained on (stand-ins or the teacher's)."""
    digest = hashlib.sha256()
    for role in sorted(os.listdir(data_root)):
        path = os.path.join(data_root, role, "manifest.json")
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(role.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _reset_if_data_changed(signature: str, *dirs: str) -> None:
    """Removes a variant's run and evaluation folders when they were made from other data (e.g. stand-ins
    before the teacher stage succeeded on a rerun), so the variant trains again."""
    marker = os.path.join(dirs[0], "data_signature.txt")
    recorded = open(marker).read().strip() if os.path.exists(marker) else None
    started = os.path.isdir(dirs[0]) and bool(os.listdir(dirs[0]))
    if started and recorded != signature:  # other data, or a run from before signatures were recorded
        print(f"{dirs[0]}: trained on other data than the data root holds now; training again", flush=True)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    os.makedirs(dirs[0], exist_ok=True)
    with open(marker, "w") as f:
        f.write(signature + "\n")


def train_variant(name: str, mixture: str, model_dir: str, config: DemoConfig,
                  validation_mixture: str | None = None) -> dict:
    """Trains one variant (resuming if interrupted); returns the TrainResult as a dict. ``validation_mixture``
    (default: the training mixture) is what the periodic validation loss is measured on."""
    gin.clear_config()
    vocab_size = PHI_PADDED_VOCAB_SIZE if config.vocabulary == "phi" else SPM8K_VOCAB_SIZE
    result = trainer.train(
        model_dir=model_dir,
        model_config=model_config(config.preset, vocab_size=vocab_size, max_len=max(config.seq_len, 256)),
        mixture_or_task_name=factory.with_vocabulary(mixture, config.vocabulary),
        task_feature_lengths={"targets": config.seq_len},
        batch_size=config.batch_size,
        train_steps=config.steps,
        vocabulary=config.vocabulary,
        optimizer=optimizer.OptimizerConfig(learning_rate=config.learning_rate, schedule="cosine",
                                            warmup_steps=max(1, config.steps // 20)),
        checkpoint=checkpoints.CheckpointConfig(save_every=max(1, config.steps // 3), keep=1),
        evaluation=hooks.ValidationConfig(eval_every=config.eval_every, num_batches=config.eval_batches,
                                          mixture_or_task_name=validation_mixture),
        seed=config.seed,
        log_every=1,  # every step: the report sums tokens/<role> into realized proportions
    )
    return dataclasses.asdict(result)


def evaluate_variant(model_dir: str, out_dir: str, config: DemoConfig) -> dict:
    """Runs the benchmark subset on the final checkpoint (skipped when its results exist)."""
    results_path = os.path.join(out_dir, "results.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            return json.load(f)
    gin.clear_config()
    results = suite.evaluate(checkpoint=model_dir, tasks=config.eval_tasks, out_dir=out_dir,
                             settings=suite.SuiteSettings(limit=config.eval_limit, seed=config.seed))
    return json.loads(json.dumps(results, default=str))


def planned_repetition(mixture: str, config: DemoConfig) -> list[dict]:
    """Each role's train tokens and the epochs of them the run's token budget asks for (the mixture's plan)."""
    import seqio

    mix = seqio.get_mixture_or_task(factory.with_vocabulary(mixture, config.vocabulary))
    budget = config.steps * config.batch_size * config.seq_len
    return [{"role": r["role"], "component_tokens": r["component_tokens"], "epochs": r["epochs"]}
            for r in mix.check_repetition(budget)]


def heldout_variant(model_dir: str, out_dir: str, roles: Sequence[str], data_root: str,
                    config: DemoConfig) -> dict:
    """Loss and bits per byte of the common held-out set (each role's validation documents, at most
    ``heldout_docs``) under the final checkpoint, with each role's document fingerprint; cached in
    ``<out_dir>/heldout.json``."""
    path = os.path.join(out_dir, "heldout.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    model = EvalModel.from_checkpoint(model_dir)
    losses = component_loss.shard_losses(model, roles, split="validation", data_root=data_root,
                                         seq_len=config.seq_len, batch_size=config.batch_size,
                                         max_documents=config.heldout_docs)
    per_role = {role: loss.to_dict() for role, loss in losses.items()}
    bpbs = [v["bpb"] for v in per_role.values() if math.isfinite(v["bpb"])]
    result = {"roles": per_role, "mean_bpb": sum(bpbs) / len(bpbs) if bpbs else float("nan"),
              "documents": sum(v["documents"] for v in per_role.values())}
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def sample_variant(model_dir: str, prompts: Sequence[str], max_new_tokens: int = 48) -> list[str]:
    """Sampled continuations (T=0.8, top-k 40, seed 0) of ``prompts`` from the final checkpoint."""
    loaded = load_model(model_dir)
    vocab = loaded.vocabulary
    ids = [list(vocab.encode(p)) for p in prompts]
    outs = generate(loaded.params, loaded.config, ids, max_new_tokens=max_new_tokens, eos_id=vocab.eos_id,
                    temperature=0.8, top_k=40, seed=0)
    return [vocab.decode(list(o.tokens)) for o in outs]


SAMPLE_PROMPTS = (
    "def fibonacci(n):\n",
    "The tutorial explains how",
    "In this chapter we will learn",
)


def run_demo(out_dir: str, config: DemoConfig | None = None,
             teacher: demo_teacher.TeacherConfig | None = None) -> dict:
    """Runs the whole ablation into ``out_dir``; returns the report dict (also ``out_dir/report.json``).

    Raises:
        Whatever a stage raises, after printing which stage failed; rerunning resumes from finished stages.
    """
    config = config or DemoConfig()
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    data_root = os.path.join(out_dir, "data")
    os.makedirs(data_root, exist_ok=True)
    # Beam workers and every stage read the data root from the environment.
    os.environ["TEXTBOOKS_DATA_DIR"] = data_root
    if config.compilation_cache:
        use_compilation_cache(os.path.join(out_dir, "jax_cache"))
    timings: dict[str, float] = {}
    start = time.time()

    _stage("corpora: real local text per data role", 1)
    t = time.time()
    corpora = build_data(data_root, config.corpora_max_docs)
    timings["corpora"] = time.time() - t

    _stage("curate: educational-value classifier + web_raw -> web_filtered (Apache Beam)", 2)
    t = time.time()
    curation = curate_web(data_root, out_dir, config) if config.curate else {"skipped": True}
    timings["curate"] = time.time() - t

    _stage("teacher: a real teacher LLM writes the synthetic roles", 3)
    t = time.time()
    teacher_summary = demo_teacher.synthesize(data_root, out_dir, teacher) if config.teacher else {"skipped": True}
    timings["teacher"] = time.time() - t
    corpora = build_data(data_root, config.corpora_max_docs)  # the manifests as trained on

    roles = heldout_roles(data_root)
    validation_mixture = register_heldout(roles, config.vocabulary)
    signature = data_signature(data_root)
    runs: dict[str, Any] = {}
    for i, (name, mixture, description) in enumerate(VARIANTS, 1):
        _stage(f"train {i}/{len(VARIANTS)}: {name} = {mixture} ({description})", 4)
        t = time.time()
        model_dir = os.path.join(out_dir, "runs", name)
        _reset_if_data_changed(signature, model_dir, os.path.join(out_dir, "eval", name))
        train_result = train_variant(name, mixture, model_dir, config, validation_mixture)
        timings[f"train/{name}"] = time.time() - t
        runs[name] = {"mixture": mixture, "description": description, "model_dir": model_dir,
                      "train": train_result, "repetition": planned_repetition(mixture, config)}

    for name, run in runs.items():
        _stage(f"evaluate {name}", 5)
        t = time.time()
        run["heldout"] = heldout_variant(run["model_dir"], os.path.join(out_dir, "eval", name), roles, data_root,
                                         config)
        run["eval"] = evaluate_variant(run["model_dir"], os.path.join(out_dir, "eval", name), config)
        run["samples"] = dict(zip(SAMPLE_PROMPTS, sample_variant(run["model_dir"], SAMPLE_PROMPTS,
                                                                      config.sample_tokens)))
        timings[f"eval/{name}"] = time.time() - t

    _stage("report", 6)
    timings["total"] = time.time() - start
    report = demo_report.write_report(out_dir, config=dataclasses.asdict(config), corpora=corpora,
                                      curation=curation, runs=runs, timings=timings, teacher=teacher_summary,
                                      heldout_roles=roles)
    print(f"\nreport: {report['markdown']}  ({timings['total'] / 60:.1f} min)", flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m textbooks.demo OUT_DIR``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    run_demo(args[0] if args else "demo_out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
