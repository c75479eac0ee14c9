"""Mixture-ratio sweeps and the mixture optimizer (RegMix / Olmix / Data Mixing Laws style).

The flow is one way, one module per step:

- :mod:`~textbooks.mixopt.design`: the mixture points of a sweep (simplex grid, Dirichlet samples around a
  prior, explicit points), validated, with per-component bounds; expanded over seeds into trials.
- :mod:`~textbooks.mixopt.trials`: trial identity (deterministic ids from the base-config fingerprint, the
  ratios and the seed), the sweep folder layout and the markers (DONE, FAILED, lock) that make sweeps resumable.
- :mod:`~textbooks.mixopt.trial_kinds`: what one trial runs (any external command, or
  :mod:`~textbooks.mixopt.training_trial`'s proxy training run through the mixture factory, the trainer and
  evaluation) and the wrapper that makes a trial resumable.
- :mod:`~textbooks.mixopt.dispatch`: dispatch of trials on submitit (local processes or Slurm arrays), or as
  emitted shell commands for any other scheduler.
- :mod:`~textbooks.mixopt.sweep`: the gin-configured ``sweep`` entry point (``textbooks sweep``).
- :mod:`~textbooks.mixopt.results`: the results table (CSV + JSON) gathered from the trial folders.
- :mod:`~textbooks.mixopt.targets`: what is fitted (a column, a group or gin composite) and whether it is
  rankable at this scale (seed-to-seed noise against the spread across mixtures, held-out Spearman).
- :mod:`~textbooks.mixopt.fit`: regressions from ratios to a metric, K-fold cross-validated.
- :mod:`~textbooks.mixopt.propose`: the best mixture under repetition caps, bounds and a prior-distance bound.
- :mod:`~textbooks.mixopt.plots`, :mod:`~textbooks.mixopt.report`: figures and the markdown report.
- :mod:`~textbooks.mixopt.optimize`: the gin-configured ``mixopt`` entry point (``textbooks mixopt``).
- :mod:`~textbooks.mixopt.validate`: the proposal and the sweep's best and median mixtures retrained with fresh
  seeds, reported on the target with intervals.
- :mod:`~textbooks.mixopt.tracking`: TensorBoard (always) and Weights & Biases (when installed and configured).

Entry points follow the project's one pattern: a verb's gin entry function carries the verb's name (gin binds
``sweep.*`` and ``mixopt.*``) and lives in the module that does that job, ``sweep.sweep`` for ``textbooks
sweep`` and ``optimize.mixopt`` for ``textbooks mixopt``; ``textbooks/commands/<verb>.py`` is its command line.
Importing one of these modules registers every configurable its gin files may bind (see
:mod:`textbooks.gin_utils`).

Importing this package is light (numpy and gin only); scipy, scikit-learn, matplotlib and JAX are imported by
the modules that need them.
"""

from textbooks.mixopt.design import (
    DesignError,
    dirichlet_design,
    expand_trials,
    explicit_design,
    grid_design,
    validate_ratios,
)
from textbooks.mixopt.trials import Trial, config_fingerprint, trial_id

__all__ = ["DesignError", "Trial", "config_fingerprint", "dirichlet_design", "expand_trials", "explicit_design",
           "grid_design", "trial_id", "validate_ratios"]
