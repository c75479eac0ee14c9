"""The mixture optimizer entry point: ``mixopt(...)``, run by ``textbooks mixopt``.

From a sweep's finished runs: assess every candidate target (:mod:`textbooks.mixopt.targets`: seed-to-seed
noise against the spread across mixtures, and held-out ranking) and refuse a target that is not rankable at this
scale (unless ``allow_unrankable``), then fit a law from ratios to the target metric, cross-validate it (Spearman rank
correlation of held-out predictions), propose the best mixture under the constraints, register it through the
mixture factory (deterministic name), and write everything to ``<sweep_dir>/mixopt/<target>-<model>/``:

- ``targets.json``, ``targets.md``: the candidates' signal-to-noise and held-out Spearman, and which was fitted;
- ``fit.json``: the law, its parameters, in-sample R^2 and the cross-validation summary;
- ``cv_predictions.csv``: each run's measured value and held-out prediction;
- ``proposal.json``: the proposal, the effective bounds and caps, the distance to the prior;
- ``proposal.gin``: a gin file that registers and selects the proposed mixture for ``textbooks train``;
- ``train_proposal.sh``: the command that trains it with the sweep's base config;
- ``report.md`` with the figures (``*.png``);
- with ``validate_seeds``: ``validation.json``, ``validation.md`` and the runs under ``validation/``: the proposal
  and the sweep's best and median mixtures trained again with those fresh seeds (:mod:`textbooks.mixopt.validate`).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import re
import shlex
from typing import Any, Mapping, Sequence

import gin
import numpy as np

from mixtures import factory
from textbooks.data import paths
from textbooks.data.manifest import read_manifest
from textbooks.mixopt import fit as fit_lib
from textbooks.mixopt import propose as propose_lib
from textbooks.mixopt import report as report_lib
from textbooks.mixopt import results as results_lib
from textbooks.mixopt import targets as targets_lib
from textbooks.mixopt import tracking
from textbooks.mixopt import trials as trials_lib

logger = logging.getLogger(__name__)


class NotRankable(fit_lib.FitError):
    """The target's seed-to-seed noise swamps its spread across mixtures (see ``targets.md``)."""


@dataclasses.dataclass
class MixoptResult:
    """What :func:`mixopt` found and wrote.

    Attributes:
        target, model, maximize: what was fitted and in which direction.
        target_formula: the target's definition (the column, or a composite's weighted mean).
        assessment: the target's signal-to-noise, held-out Spearman and verdict (see :func:`targets.assess`).
        num_runs, num_points: finished runs used and distinct mixtures among them.
        cv: the cross-validation summary (see :meth:`fit.CVResult.summary`).
        formula, params, r2: the law fitted on all runs.
        proposal: the proposed mixture (:class:`propose.Proposal`).
        mixture_name: its registered name (None when registration was off).
        out_dir: the output folder; files: name -> path of each output.
        validation: the fresh-seed validation (:class:`validate.ValidationResult`), when it was run.
    """

    target: str
    model: str
    maximize: bool
    target_formula: str
    assessment: dict[str, Any]
    num_runs: int
    num_points: int
    cv: dict[str, Any]
    formula: str
    params: dict[str, Any]
    r2: float
    proposal: propose_lib.Proposal
    mixture_name: str | None
    out_dir: str
    files: dict[str, str]
    validation: Any = None


def data_token_counts(components: Sequence[str], bytes_per_token: float = 4.0,
                      root: str | None = None) -> dict[str, float]:
    """Estimated training tokens per component: the train split's UTF-8 bytes (from each role's manifest under
    the data root) divided by ``bytes_per_token``.

    Raises:
        FileNotFoundError: a role's manifest is missing (names it).
    """
    out = {}
    for c in components:
        manifest = read_manifest(paths.role_dir(c, root))
        if "train" not in manifest.splits:
            raise FileNotFoundError(f"the manifest of {c!r} has no train split; splits: {sorted(manifest.splits)}")
        out[c] = manifest.splits["train"].num_bytes / float(bytes_per_token)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "target"


def load_runs(sweep: trials_lib.SweepDir, target: str,
              composites: Mapping[str, Mapping[str, float]] | None = None
              ) -> tuple[list[str], list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:
    """``(components, rows, X, y, groups)`` of the finished runs that have a finite ``target`` (a column, or a
    composite of :func:`targets.all_composites`).

    Raises:
        FileNotFoundError: not a sweep folder.
        fit.FitError: no finished run, or ``target`` is neither a metric of the sweep nor a composite (lists them).
    """
    manifest = sweep.manifest()
    comps = list(manifest["components"])
    rows = results_lib.refresh(sweep)
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        counts = results_lib.summarize(rows)
        raise fit_lib.FitError(f"{sweep.root} has no finished run ({counts}); run `textbooks sweep` first")
    names = results_lib.metric_names(rows, comps)
    composites = targets_lib.all_composites(names, composites)
    if target not in names and target not in composites:
        raise fit_lib.FitError(f"target {target!r} is not a metric of this sweep; its metrics are: "
                               f"{', '.join(names) or '(none)'}; composites: {', '.join(composites) or '(none)'}")
    values = targets_lib.values(done, target, composites)
    used = [r for r, v in zip(done, values) if math.isfinite(v)]
    skipped = len(done) - len(used)
    if skipped:
        logger.warning("%d finished run(s) have no finite %s and are left out", skipped, target)
    X = np.array([results_lib.design_ratios(r, comps) for r in used])  # realized ratios when recorded
    y = values[np.isfinite(values)]
    groups = np.array([int(r["point"]) if r.get("point") is not None else -1 for r in used])
    return comps, used, X, y, groups


def _runner_spec(sweep: trials_lib.SweepDir) -> dict[str, Any]:
    return trials_lib.read_json(os.path.join(sweep.root, "runner.json")) or {}


def proposal_gin(ratios: Mapping[str, float], spec: Mapping[str, Any], header: str) -> str:
    """The text of ``proposal.gin``: registers the mixture with the sweep's factory settings and selects it."""
    kw = spec.get("kwargs", {}) if spec.get("class", "").endswith("TrainingTrial") else {}
    macro = kw.get("mixture_macro", "MIXTURE_OR_TASK_NAME")
    # No imports: `textbooks train` imports the mixture factory, which registers registered_mixture.
    lines = [f"# {line}" for line in header.splitlines()] + [""]
    ratio_text = ", ".join(f"{k!r}: {float(v)!r}" for k, v in ratios.items())  # as given: the factory validates
    lines.append(f"registered_mixture.ratios = {{{ratio_text}}}")
    for key, param in (("mixture_temperature", "temperature"), ("mixture_vocabulary", "vocabulary")):
        if kw.get(key) is not None:
            lines.append(f"registered_mixture.{param} = {kw[key]!r}")
    lines.append(f"{macro} = @registered_mixture()")
    return "\n".join(lines) + "\n"


def train_command(spec: Mapping[str, Any], gin_path: str, model_dir: str) -> str | None:
    """``textbooks train`` with the sweep's base gin files and bindings plus ``proposal.gin``."""
    if not spec.get("class", "").endswith("TrainingTrial"):
        return None
    kw = spec.get("kwargs", {})
    parts = ["textbooks", "train"] + [f"--gin_file={f}" for f in kw.get("gin_files", [])]
    parts += [f"--gin_search_path={p}" for p in kw.get("gin_search_paths", [])]
    parts += [f"--gin_bindings={b}" for b in kw.get("gin_bindings", [])]
    parts += [f"--gin_file={gin_path}", f"--model_dir={model_dir}"]
    return shlex.join(parts)


@gin.configurable
def mixopt(sweep_dir: str = gin.REQUIRED, target: str = gin.REQUIRED, model: str = "loglinear",
           maximize: bool | None = None, num_folds: int = 5, seed: int = 0,
           constraints: propose_lib.ProposalConstraints | None = None, tokens_from_data: bool = False,
           bytes_per_token: float = 4.0, register: bool = True, out_dir: str | None = None,
           num_candidates: int = 20_000, curve_key: str = "loss",
           composites: Mapping[str, Mapping[str, float]] | None = None, min_snr: float = 1.0,
           allow_unrankable: bool = False, candidate_model: str = "linear",
           validate_seeds: Sequence[int] | None = None) -> MixoptResult:
    """Fits, cross-validates, proposes, registers and reports (see the module docstring).

    Args:
        sweep_dir: the sweep folder.
        target: the metric column or composite to optimize (e.g. ``valid/loss/web_filtered``,
            ``bench/common_sense/bpb``; see :mod:`textbooks.mixopt.targets`).
        model: ``loglinear``, ``mixing_law``, ``linear`` or ``lightgbm``.
        maximize: maximize the target instead of minimizing it (None: maximize accuracies and probabilities,
            minimize losses and bits per byte).
        num_folds: K of the cross-validation.
        seed: seed of the folds, restarts and candidate search.
        constraints: bounds, repetition caps and trust region of the proposal.
        tokens_from_data: fill ``constraints.component_tokens`` from the data manifests.
        bytes_per_token: bytes per token for that estimate.
        register: register the proposal through the mixture factory.
        out_dir: output folder (default ``<sweep_dir>/mixopt/<target>-<model>``).
        num_candidates: size of the dense candidate search.
        curve_key: the per-step metric drawn in the loss-curve figure.
        composites: named weighted means of columns (``{name: {column: weight}}``), usable as targets.
        min_snr: a target whose signal-to-noise ratio is below this is not rankable at this scale.
        allow_unrankable: fit such a target anyway (the report still flags it).
        candidate_model: the law of the candidates' held-out Spearman in ``targets.md`` (the chosen target's
            own law is cross-validated as well).
        validate_seeds: fresh seeds to train the proposal and the sweep's best and median mixtures with, and
            report them on the target with intervals (None: no validation runs).

    Raises:
        NotRankable: the target's noise swamps its spread (``targets.md`` says by how much).
        fit.FitError: no usable runs, unknown target or model, too few runs for the law.
        propose.ProposalError: infeasible constraints.
    """
    sweep = trials_lib.SweepDir(sweep_dir)
    manifest = sweep.manifest()
    comps, rows, X, y, groups = load_runs(sweep, target, composites)
    fit_lib.make_model(model, seed)  # fail early on an unknown or unavailable model
    maximize = targets_lib.higher_is_better(target) if maximize is None else bool(maximize)
    out_dir = out_dir or os.path.join(sweep.root, "mixopt", f"{_safe(target)}-{model}")
    os.makedirs(out_dir, exist_ok=True)
    all_rows = results_lib.gather(sweep)
    composites = targets_lib.all_composites(results_lib.metric_names(all_rows, comps), composites)
    assessment, files = assess_targets(sweep, target, composites, out_dir, num_folds=num_folds, seed=seed,
                                       min_snr=min_snr, candidate_model=candidate_model)
    if assessment["rankable"] is None:
        logger.warning("target %s: %s; run 2+ seeds per mixture to know whether it is rankable", target,
                       assessment["verdict"])
    elif not assessment["rankable"]:
        message = (f"target {target!r} is {assessment['verdict']}: seed-to-seed noise {assessment['noise']:.4g} "
                   f"against a spread of {assessment['spread']:.4g} across {assessment['num_points']} mixtures "
                   f"(held-out Spearman {assessment['cv_spearman']:.3f}); see {files['targets_md']} for the "
                   "candidates, or set mixopt.allow_unrankable = True to fit it anyway")
        if not allow_unrankable:
            raise NotRankable(message)
        logger.warning("%s; fitting it because allow_unrankable is set", message)
    constraints = dataclasses.replace(constraints) if constraints else propose_lib.ProposalConstraints()
    if tokens_from_data and constraints.component_tokens is None:
        constraints.component_tokens = data_token_counts(comps, bytes_per_token)

    logger.info("fitting %s to %s over %d run(s) at %d mixture(s)", model, target, len(y), len(set(groups)))
    cv = fit_lib.cross_validate(model, X, y, groups, num_folds=num_folds, seed=seed)
    law = fit_lib.make_model(model, seed).fit(X, y)
    r2 = fit_lib.r_squared(y, law.predict(X))
    proposal = propose_lib.propose(law, comps, constraints, prior=manifest.get("prior"), maximize=maximize,
                                   num_candidates=num_candidates, seed=seed)
    logger.info("CV Spearman %.3f; proposal %s (predicted %s = %.4g)", cv.spearman, proposal.ratios, target,
                proposal.predicted)

    spec = _runner_spec(sweep)
    mixture_name = None
    if register:
        kw = spec.get("kwargs", {}) if spec.get("class", "").endswith("TrainingTrial") else {}
        mixture_name = factory.registered_mixture(proposal.ratios, temperature=kw.get("mixture_temperature"),
                                                  vocabulary=kw.get("mixture_vocabulary"))
    header = (f"The mixture proposed by `textbooks mixopt` for {target} ({'max' if maximize else 'min'}) from the "
              f"sweep\n{sweep.root} (base config {manifest['fingerprint']}), law {model}, CV Spearman "
              f"{cv.spearman:.3f}.\nRegistered name: {mixture_name or '(not registered)'}. Compose after the base "
              "training gin files\n(set TRAIN_STEPS etc. for the target run).")
    files["gin"] = os.path.join(out_dir, "proposal.gin")
    with open(files["gin"], "w") as f:
        f.write(proposal_gin(proposal.ratios, spec, header))
    command = train_command(spec, files["gin"], os.path.join(out_dir, "proposal_run"))
    if command:
        files["train_command"] = os.path.join(out_dir, "train_proposal.sh")
        with open(files["train_command"], "w") as f:
            f.write(f"#!/usr/bin/env bash\n# Trains the proposed mixture with the sweep's base config.\n{command}\n")
        os.chmod(files["train_command"], 0o755)

    files["cv_predictions"] = os.path.join(out_dir, "cv_predictions.csv")
    with open(files["cv_predictions"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "point", "seed", *[f"ratio/{c}" for c in comps], target, "predicted_heldout",
                    "fold"])
        for r, yy, pp, ff in zip(rows, y, cv.oof, cv.folds):
            w.writerow([r["trial_id"], r.get("point"), r.get("seed"), *[r[f"ratio/{c}"] for c in comps], yy, pp,
                        int(ff)])
    target_formula = targets_lib.describe(target, composites)
    fit_info = {"target": target, "target_formula": target_formula, "assessment": assessment,
                "model": model, "maximize": maximize, "formula": law.formula(),
                "params": law.params(), "components": comps, "r2_in_sample": r2, "num_runs": int(len(y)),
                "num_points": int(len(set(groups.tolist()))), "cv": cv.summary(),
                "fingerprint": manifest["fingerprint"]}
    files["fit"] = os.path.join(out_dir, "fit.json")
    trials_lib.write_json_atomic(files["fit"], fit_info)
    files["proposal"] = os.path.join(out_dir, "proposal.json")
    trials_lib.write_json_atomic(files["proposal"], {**proposal.to_dict(), "mixture_name": mixture_name,
                                                     "train_command": command, "target": target})
    result = MixoptResult(target=target, model=model, maximize=maximize, target_formula=target_formula,
                          assessment=assessment, num_runs=int(len(y)),
                          num_points=fit_info["num_points"], cv=cv.summary(), formula=law.formula(),
                          params=law.params(), r2=r2, proposal=proposal, mixture_name=mixture_name,
                          out_dir=out_dir, files=files)
    files["report"] = report_lib.write_report(result, sweep, law, X, y, cv, rows, comps, command, curve_key)
    try:
        tracking.log_fit_summary(sweep.root, {f"mixopt/{target}/{model}/cv_spearman": cv.spearman,
                                              f"mixopt/{target}/{model}/r2": r2,
                                              f"mixopt/{target}/{model}/predicted": proposal.predicted})
    except Exception as e:  # noqa: BLE001 - tracking never fails the fit.
        logger.warning("TensorBoard logging of the fit failed: %s", e)
    logger.info("report: %s", files["report"])
    if validate_seeds:
        from textbooks.mixopt import validate as validate_lib  # deferred: it imports the trial runners

        result.validation = validate_lib.validate(sweep.root, target, proposal.ratios, out_dir, maximize=maximize,
                                                  composites=composites, seeds=list(validate_seeds),
                                                  predicted=proposal.predicted)
        files["validation"] = result.validation.files["markdown"]
    return result


def assess_targets(sweep: trials_lib.SweepDir, target: str, composites: Mapping[str, Mapping[str, float]],
                   out_dir: str, *, num_folds: int = 5, seed: int = 0, min_snr: float = 1.0,
                   candidate_model: str = "linear") -> tuple[dict[str, Any], dict[str, str]]:
    """Assesses ``target`` and every candidate (see :func:`targets.candidates`) and writes ``targets.json`` and
    ``targets.md`` to ``out_dir``.

    Returns:
        (the target's assessment, {'targets_json': path, 'targets_md': path}).
    """
    rows = results_lib.gather(sweep)
    done = [r for r in rows if r["status"] == "done"]
    comps = list(sweep.manifest()["components"])
    names = targets_lib.candidates(results_lib.metric_names(rows, comps), composites, target)
    assessments = []
    for name in names:
        vals = targets_lib.values(done, name, composites)
        keep = np.isfinite(vals)
        if keep.sum() < 3:
            continue
        X = np.array([results_lib.design_ratios(r, comps) for r, k in zip(done, keep) if k])
        groups = np.array([int(r["point"]) if r.get("point") is not None else -1 for r, k in zip(done, keep) if k])
        assessments.append(targets_lib.assess(name, X, vals[keep], groups, model=candidate_model,
                                              num_folds=num_folds, seed=seed, min_snr=min_snr))
    chosen = next(a for a in assessments if a["target"] == target) if any(
            a["target"] == target for a in assessments) else None
    if chosen is None:
        raise fit_lib.FitError(f"target {target!r} has fewer than 3 finished runs with a value")
    files = {"targets_json": os.path.join(out_dir, "targets.json"), "targets_md": os.path.join(out_dir, "targets.md")}
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in a.items()}
             for a in assessments]
    trials_lib.write_json_atomic(files["targets_json"], {"target": target, "min_snr": min_snr,
                                                         "formula": targets_lib.describe(target, composites),
                                                         "composites": composites, "candidates": clean})
    with open(files["targets_md"], "w") as f:
        f.write("\n".join([f"# Targets of {sweep.root}", "",
                           f"Fitted target: {targets_lib.describe(target, composites)} - {chosen['verdict']}.", "",
                           f"Seed noise: pooled standard deviation between the seeds of a mixture; spread: standard "
                           f"deviation of the mixtures' means; signal-to-noise: the spread less the noise's share "
                           f"of it, over the noise (flagged below {min_snr:g}). Held-out Spearman: grouped "
                           f"{num_folds}-fold CV of the {candidate_model} law.", "",
                           *targets_lib.table_markdown(assessments, target), ""]))
    return chosen, files


def result_summary(result: MixoptResult) -> str:
    """A few lines for the terminal."""
    ratios = ", ".join(f"{c}={v:.3f}" for c, v in result.proposal.ratios.items())
    a = result.assessment
    return "\n".join([
            f"target {result.target_formula} ({'max' if result.maximize else 'min'}): seed noise {a['noise']:.4g}, "
            f"spread across mixtures {a['spread']:.4g}, signal-to-noise {a['snr']:.2f} - {a['verdict']}",
            f"{result.model} fit of {result.target} on {result.num_runs} runs ({result.num_points} mixtures): "
            f"CV Spearman {result.cv['spearman']:.3f}, in-sample R^2 {result.r2:.3f}",
            f"proposal ({result.proposal.method}): {ratios}; "
            f"predicted {result.target} = {result.proposal.predicted:.4g}",
            f"mixture: {result.mixture_name or '(not registered)'}",
            *_validation_lines(result.validation),
            *(f"{name}: {path}" for name, path in result.files.items())])


def _validation_lines(validation: Any) -> list[str]:
    if validation is None:
        return []
    out = [f"validation with fresh seeds {validation.seeds}:"]
    for label, m in validation.mixtures.items():
        out.append(f"  {label:12s} {validation.target} {m['mean']:.4g} [{m['low']:.4g}, {m['high']:.4g}] n={m['n']}")
    d = validation.proposal_minus_best
    out.append(f"  improvement over the sweep's best {d['diff']:.4g} [{d['low']:.4g}, {d['high']:.4g}]")
    return out


def parse_mapping(text: str | None, what: str) -> dict[str, Any] | None:
    """``'a=1,b=2'`` or ``'a=0:0.5,b=0.1:1'`` (pairs) -> dict; None for None.

    Raises:
        ValueError: malformed text (names ``what`` and the bad item).
    """
    if text is None:
        return None
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"{what}: {item!r} is not NAME=VALUE")
        k, v = (s.strip() for s in item.split("=", 1))
        try:
            out[k] = tuple(float(x) for x in v.split(":")) if ":" in v else float(v)
        except ValueError:
            raise ValueError(f"{what}: value of {k!r} is not a number: {v!r}") from None
    return out

