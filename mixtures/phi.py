"""The mixtures of the phi-1 and phi-1.5 papers, as token fractions over the data roles.

=================  ==========================================================================================
``phi1``           CodeTextbook: filtered code (~6B tokens) + synthetic Python textbooks (<1B), mixed by size:
                   code_filtered 6/7, code_textbooks 1/7.
``phi1_finetune``  CodeExercises only.
``phi15``          80% synthetic NLP textbooks + 20% phi-1 data; the 20% is split like ``phi1`` (6:1 by
                   tokens): code_filtered 17.14%, code_textbooks 2.86%.
``phi15_web_only`` filtered web only: 80% web_filtered + 20% code_filtered.
``phi15_web``      40% web_filtered + 20% phi-1 data (split 6:1 as above) + 40% synthetic_textbooks.
=================  ==========================================================================================

Each name uses the default vocabulary (gin ``mixtures.roles.vocabulary_name.name``); ``<name>_phi``,
``<name>_spm8k`` and ``<name>_byte`` pin one. Rates are token fractions, realized exactly per sequence of
packed rows (see :mod:`mixtures.mixing`).
"""

from __future__ import annotations

from mixtures import factory, roles

# phi-1's CodeTextbook: "about 6B tokens" of filtered code and "<1B tokens" of synthetic textbooks.
PHI1_CODE = {"code_filtered": 6 / 7, "code_textbooks": 1 / 7}


def _scaled(parts: dict[str, float], factor: float) -> dict[str, float]:
    return {k: v * factor for k, v in parts.items()}


MIXTURES: dict[str, dict[str, float]] = {
    "phi1": dict(PHI1_CODE),
    "phi1_finetune": {"code_exercises": 1.0},
    "phi15": {"synthetic_textbooks": 0.8, **_scaled(PHI1_CODE, 0.2)},
    "phi15_web_only": {"web_filtered": 0.8, "code_filtered": 0.2},
    "phi15_web": {"web_filtered": 0.4, "synthetic_textbooks": 0.4, **_scaled(PHI1_CODE, 0.2)},
}


def register_phi_mixtures(vocabularies=roles.VOCABULARY_NAMES) -> list[str]:
    """Registers the paper mixtures (idempotent): default-vocabulary names plus ``<name>_<vocab>``."""
    names = []
    for name, ratios in MIXTURES.items():
        names.append(factory.register_mixture(ratios, name=name))
        for vocabulary in vocabularies:
            names.append(factory.register_mixture(ratios, name=f"{name}_{roles.vocab_suffix(vocabulary)}",
                                                  vocabulary=vocabulary))
    return names
