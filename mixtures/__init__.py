"""seqio Tasks and Mixtures for the data roles: ``import mixtures`` registers them all.

* :mod:`mixtures.roles`: one Task per role and vocabulary (``code_filtered_phi``, ``web_filtered_spm8k``, ...,
  ``<role>_tfds_<vocab>`` over the TFDS builds) and default-vocabulary aliases (``code_filtered``) chosen with
  gin ``mixtures.roles.vocabulary_name.name``.
* :mod:`mixtures.phi`: the paper mixtures ``phi1``, ``phi1_finetune``, ``phi15``, ``phi15_web_only``,
  ``phi15_web`` (rates are token fractions).
* :mod:`mixtures.factory`: :func:`register_mixture` for any ratio vector, temperature sampling, repetition caps.
* :mod:`mixtures.mixing`: :class:`TokenMixture`, the seqio Mixture that realizes token fractions exactly.
* :mod:`mixtures.sources`, :mod:`mixtures.preprocessors`: the DataSources (shards, TFDS) and the task steps.
* :mod:`mixtures.testing`: small synthetic role corpora for tests, benchmarks and demos.

Role names and ids are those of :mod:`textbooks.data.roles`. Train on the mixtures with
:func:`textbooks.inputs.pipeline.make_train_iterator`, or in T5X style with
``seqio.get_dataset(name, {'targets': L}, textbooks.inputs.converters.LMPackingFeatureConverter(), ...)``.

The data root is read when datasets are built, so gin or flags may set it after this import.
"""

from mixtures import factory, mixing, phi, roles
from mixtures.factory import mixture_name, register_mixture, validate_ratios, with_vocabulary
from mixtures.mixing import TokenMixture
from mixtures.roles import (
    VOCABULARY_NAMES,
    RoleTask,
    get_role_task,
    get_vocabulary,
    task_name,
    vocabulary_name,
)

roles.register_role_tasks()
phi.register_phi_mixtures()

__all__ = [
    "RoleTask", "TokenMixture", "VOCABULARY_NAMES", "factory", "get_role_task", "get_vocabulary", "mixing",
    "mixture_name", "phi", "register_mixture", "roles", "task_name", "validate_ratios", "vocabulary_name",
    "with_vocabulary",
]
