"""Register a mixture for any vector of role ratios, under a deterministic name.

    >>> from mixtures import factory
    >>> factory.register_mixture({"web_filtered": 0.4, "code_filtered": 0.2, "synthetic_textbooks": 0.4})
    'mix_st40_cf20_wf40'

Ratios are token fractions (normalized; zeros drop the role). The name lists each role's abbreviation
(:data:`ABBREVIATIONS`) and percentage in role order, plus ``_t<T>`` for a temperature, ``_<vocab>`` for an
explicit vocabulary and ``_tfds`` for the TFDS source; when two decimals cannot represent a percentage a short
hash of the exact ratios is appended. Registering the same ratios again returns the same name (idempotent);
registering different ratios under a taken name is an error.

With ``temperature=T`` the ratios are per-role weights and rates become ``(weight * train_tokens) ** (1/T)``:
``{'web_filtered': 1, 'code_filtered': 1}`` at ``T=1`` mixes in proportion to size and at large ``T``
approaches equal shares. ``max_epochs`` with ``token_budget`` (train steps x global batch x length, or given
later to :meth:`TokenMixture.get_dataset` by the input pipeline) caps every component at that many passes over
its tokens and gives the excess to the others in proportion (:func:`mixtures.mixing.cap_fractions`).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import threading
from typing import Mapping, Optional

import gin
import seqio

from mixtures import mixing, roles
from textbooks import gin_utils
from textbooks.data.roles import ROLES

ABBREVIATIONS: dict[str, str] = {
    "synthetic_textbooks": "st",
    "code_textbooks": "ct",
    "code_exercises": "ce",
    "code_filtered": "cf",
    "web_filtered": "wf",
    "web_raw": "wr",
}
_lock = threading.Lock()


def validate_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    """Checks a role -> ratio mapping and returns the positive entries, normalized, in role order.

    Raises:
        TypeError: not a mapping, or a ratio that is not a real number.
        ValueError: empty, an unknown role, a negative / NaN / infinite ratio, or all ratios zero.
    """
    if not isinstance(ratios, Mapping):
        raise TypeError(f"ratios must be a mapping role -> ratio, got {type(ratios).__name__}")
    if not ratios:
        raise ValueError(f"ratios are empty; give at least one of: {', '.join(ROLES)}")
    for key, value in ratios.items():
        if key not in ROLES:
            raise ValueError(f"unknown role {key!r} in ratios; known roles: {', '.join(ROLES)}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"ratio of {key!r} must be a real number, got {value!r}")
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"ratio of {key!r} is {value}; ratios must be finite")
        if value < 0:
            raise ValueError(f"ratio of {key!r} is negative ({value}); ratios must be >= 0")
    total = float(sum(ratios.values()))
    if total <= 0:
        raise ValueError(f"all ratios are zero ({dict(ratios)}); at least one role needs a positive ratio")
    return {r: float(ratios[r]) / total for r in ROLES if ratios.get(r, 0) > 0}


def _pct(x: float) -> str:
    s = f"{100 * x:.2f}".rstrip("0").rstrip(".")
    return s or "0"


def mixture_name(ratios: Mapping[str, float], *, temperature: Optional[float] = None,
                 vocabulary: Optional[str] = None, source: str = "shards") -> str:
    """The deterministic name :func:`register_mixture` gives these arguments (ratios validated)."""
    normalized = validate_ratios(ratios)
    parts = [f"{ABBREVIATIONS[r]}{_pct(v)}" for r, v in normalized.items()]
    name = "mix_" + "_".join(parts)
    exact = all(abs(float(_pct(v)) / 100 - v) < 1e-9 for v in normalized.values())
    if not exact:
        digest = hashlib.sha1(json.dumps(normalized, sort_keys=True).encode()).hexdigest()[:6]
        name += f"_h{digest}"
    if temperature is not None:
        name += f"_t{temperature:g}"
    if source != "shards":
        name += f"_{source}"
    if vocabulary is not None:
        name += f"_{roles.vocab_suffix(vocabulary)}"
    return name


def register_mixture(ratios: Mapping[str, float], *, name: Optional[str] = None,
                     temperature: Optional[float] = None, max_epochs: Optional[float] = None,
                     token_budget: Optional[int] = None, vocabulary: Optional[str] = None,
                     source: str = "shards", mixing_mode: str = "rows", schedule: str = "stratified") -> str:
    """Registers a :class:`~mixtures.mixing.TokenMixture` for ``ratios`` and returns its name.

    Args:
        ratios: role -> token ratio (normalized; zero drops the role). With ``temperature``, per-role weights.
        name: the mixture name; default :func:`mixture_name`.
        temperature: sample in proportion to ``(weight * train_tokens) ** (1 / temperature)``.
        max_epochs: repetition cap: most passes over a component within ``token_budget``.
        token_budget: planned training tokens (steps x global batch x sequence length).
        vocabulary: explicit vocabulary ('phi', 'spm8k', 'byte', 'spm:PATH'); None uses the default
            (gin ``mixtures.roles.vocabulary_name.name``) when data is read.
        source: 'shards' (the jsonl.gz folders) or 'tfds' (the ``textbooks_corpus`` builds).
        mixing_mode: 'rows' (exact token fractions) or 'documents' (seqio example sampling).
        schedule: 'stratified' (balanced interleaving) or 'random' (independent draws).

    Returns:
        The registered name.

    Raises:
        TypeError, ValueError: bad ratios (the message names the key), a non-positive or non-finite
            temperature or max_epochs, an unknown source, or ``name`` taken by a different mixture.
    """
    normalized = validate_ratios(ratios)
    if temperature is not None and not (isinstance(temperature, numbers.Real) and math.isfinite(temperature)
                                        and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if max_epochs is not None and not (isinstance(max_epochs, numbers.Real) and max_epochs > 0):
        raise ValueError(f"max_epochs must be positive, got {max_epochs!r}")
    if token_budget is not None and not (isinstance(token_budget, numbers.Integral) and token_budget > 0):
        raise ValueError(f"token_budget must be a positive integer, got {token_budget!r}")
    if source not in roles.SOURCES:
        raise ValueError(f"unknown source {source!r}; use one of {', '.join(roles.SOURCES)}")
    if vocabulary is not None:
        roles.vocab_suffix(vocabulary)  # Validates the name.
    weights = {r: float(ratios[r]) for r in normalized} if temperature is not None else normalized
    spec = mixing.MixtureSpec(weights=tuple(weights.items()), temperature=temperature, vocabulary=vocabulary,
                              source=source, mixing=mixing_mode, schedule=schedule)
    name = name or mixture_name(ratios, temperature=temperature, vocabulary=vocabulary, source=source)
    with _lock:
        if name in seqio.MixtureRegistry.names():
            existing = seqio.MixtureRegistry.get(name)
            if not isinstance(existing, mixing.TokenMixture) or existing.spec != spec:
                raise ValueError(f"mixture name {name!r} is already registered with a different definition "
                                 f"({getattr(existing, 'spec', existing)}); choose another name")
            if max_epochs is not None:
                existing.max_epochs = max_epochs
            if token_budget is not None:
                existing.token_budget = token_budget
            return name
        if name in seqio.TaskRegistry.names():
            raise ValueError(f"{name!r} is already a task name; choose another mixture name")
        seqio.MixtureRegistry.add_provider(
            name, mixing.TokenMixture(name, spec, max_epochs=max_epochs, token_budget=token_budget))
    return name


def with_vocabulary(mixture_name_: str, vocabulary: str) -> str:
    """The name of ``mixture_name_``'s variant with an explicit vocabulary, registering it if needed.

    Tasks: ``<role>`` -> ``<role>_<vocab>``. Mixtures registered through this module:
    ``<name>_<vocab>`` with the same ratios.
    """
    suffix = roles.vocab_suffix(vocabulary)
    if mixture_name_ in seqio.TaskRegistry.names():
        task = seqio.TaskRegistry.get(mixture_name_)
        if not isinstance(task, roles.RoleTask):
            raise TypeError(f"task {mixture_name_!r} is not a data-role task")
        if task.vocabulary_name is not None:
            if task.vocabulary_name != vocabulary:
                raise ValueError(f"task {mixture_name_!r} uses vocabulary {task.vocabulary_name!r}, "
                                 f"not {vocabulary!r}")
            return mixture_name_
        return roles.get_role_task(task.role, vocabulary, task.source_kind).name
    mixture = seqio.get_mixture_or_task(mixture_name_)
    if not isinstance(mixture, mixing.TokenMixture):
        raise TypeError(f"{mixture_name_!r} is not a TokenMixture; pick its vocabulary when registering it")
    spec = mixture.spec
    if spec.vocabulary is not None:
        if spec.vocabulary != vocabulary:
            raise ValueError(f"mixture {mixture_name_!r} uses vocabulary {spec.vocabulary!r}, not {vocabulary!r}")
        return mixture_name_
    return register_mixture(dict(spec.weights), name=f"{mixture_name_}_{suffix}", temperature=spec.temperature,
                            max_epochs=mixture.max_epochs, token_budget=mixture.token_budget,
                            vocabulary=vocabulary, source=spec.source, mixing_mode=spec.mixing,
                            schedule=spec.schedule)


@gin_utils.configurable  # may be first imported after gin is locked
def registered_mixture(ratios: Mapping[str, float] = gin.REQUIRED, temperature: Optional[float] = None,
                       max_epochs: Optional[float] = None, token_budget: Optional[int] = None,
                       vocabulary: Optional[str] = None) -> str:
    """:func:`register_mixture` for gin: registers ``ratios`` and returns the deterministic name, so that a gin file
    (such as the ``proposal.gin`` of ``textbooks mixopt``) can both define and select a mixture for ``textbooks
    train``, whose trainer imports this module::

        registered_mixture.ratios = {'web_filtered': 0.3, 'code_filtered': 0.2, 'synthetic_textbooks': 0.5}
        MIXTURE_OR_TASK_NAME = @registered_mixture()

    The ratios go to :func:`register_mixture` as given: it is the one place that validates them (a negative, NaN
    or non-numeric ratio, or an unknown role, is an error there; a zero drops the role).

    Raises:
        TypeError, ValueError: the ratios or settings were refused (the message names the key).
    """
    return register_mixture(ratios, temperature=temperature, max_epochs=max_epochs, token_budget=token_budget,
                            vocabulary=vocabulary)
