"""The one loader of trained models: any checkpoint folder to (config, parameters, vocabulary).

:func:`load_model` reads what evaluation, serving, curation, the demo, ``textbooks convert`` and a training
run's ``init_from`` are given:

* a training run's model dir (``<model_dir>/checkpoints/<step>/``, orbax; the newest readable step), that
  ``checkpoints`` folder, or one step dir (with ``params/`` and ``metadata/``);
* a transformers-format folder (``config.json`` + safetensors, :mod:`textbooks.model.hf`);
* a params folder (``textbooks_config.json`` + ``params.safetensors``, :mod:`textbooks.model.params_io`);
* a GGUF file (llama or qwen2, :mod:`textbooks.model.gguf`), or a registered name such as
  ``smollm2-135m-instruct`` that resolves to a file an installed data package ships
  (:data:`textbooks.data_packages.NAMED_CHECKPOINTS`).

Folders are told apart by their marker files (:func:`textbooks.model.hf.is_hf_dir`,
:func:`textbooks.model.params_io.is_params_dir`, :func:`is_step_dir`), local or ``gs://``. The vocabulary is
the one recorded with the checkpoint (:mod:`textbooks.model.vocab_files`). Writing a run's checkpoints is the
trainer's (:mod:`textbooks.train.checkpoints`); this module only reads the parameters and metadata items.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
import seqio
from etils import epath

from textbooks.data import files, paths
from textbooks import data_packages
from textbooks.model import causal_lm, gguf, hf, params_io
from textbooks.model.config import ModelConfig
from textbooks.model.vocab_files import DEFAULT_VOCABULARY, vocabulary_name
from textbooks.vocab.gguf_tokenizer import is_gguf_file
from textbooks.vocab.registry import get_vocabulary

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"  # of a run's model dir: one folder per saved step
METADATA_ITEM = "metadata"  # of a step dir: JSON with the model config, vocabulary name and step
PARAMS_ITEM = "params"  # of a step dir: the parameters (orbax)


@dataclasses.dataclass
class LoadedModel:
    """A trained model: its config, parameters and vocabulary.

    Attributes:
        config: the :class:`textbooks.model.config.ModelConfig`.
        params: parameter tree for :class:`textbooks.model.causal_lm.CausalLM`.
        vocabulary: the seqio vocabulary it was trained with.
        vocabulary_name: its name (for :func:`textbooks.vocab.registry.get_vocabulary`).
        step: training step of the checkpoint (None for transformers-format and params folders).
        path: the folder the parameters were read from.
        metadata: the checkpoint's metadata JSON (for transformers-format and params folders only ``vocabulary``).
    """

    config: ModelConfig
    params: Any
    vocabulary: seqio.Vocabulary
    vocabulary_name: str = DEFAULT_VOCABULARY
    step: int | None = None
    path: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def chat_template(self) -> str | None:
        """The model's jinja chat template (its own tokenizer's: a GGUF file's, or what a folder's
        ``tokenizer_config.json``/``chat_template.jinja`` carry), or None."""
        return getattr(self.vocabulary, "chat_template", None)


def is_step_dir(path: str) -> bool:
    """True if ``path`` (local or ``gs://``) is one step of a run's checkpoints (``params/`` and ``metadata/``)."""
    return all(files.exists(files.join(path, item)) for item in (PARAMS_ITEM, METADATA_ITEM))


def _candidate_step_dirs(path: str) -> Iterator[epath.Path]:
    """Step dirs to try for ``path``, newest first."""
    if is_step_dir(path):
        yield epath.Path(path)
        return
    p = epath.Path(path)
    root = p / CHECKPOINT_SUBDIR if (p / CHECKPOINT_SUBDIR).exists() else p
    if not root.exists():
        raise FileNotFoundError(f"{path} does not exist")
    steps = sorted((int(c.name), c) for c in root.iterdir() if c.is_dir() and c.name.isdigit())
    if not steps:
        raise FileNotFoundError(f"{path} holds no checkpoint: expected an orbax model dir (with {CHECKPOINT_SUBDIR}/"
                                f"<step>/), a step dir (with {PARAMS_ITEM}/ and {METADATA_ITEM}/), a "
                                f"transformers-format folder ({hf.CONFIG_NAME} + {hf.WEIGHTS_NAME}) or a params "
                                f"folder ({params_io.CONFIG_FILE} + {params_io.PARAMS_FILE})")
    for _, c in reversed(steps):
        yield c


def _abstract_params(config: ModelConfig, shardings: Any = None) -> Any:
    shapes = causal_lm.param_shapes(config)
    if shardings is None:
        device = jax.local_devices()[0]
        shardings = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(device), shapes)
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  shapes, shardings)


def read_metadata(step_dir: str) -> dict[str, Any]:
    """The ``metadata`` JSON of a step dir (model config, vocabulary name, step, gin config, data settings)."""
    path = epath.Path(step_dir) / METADATA_ITEM / METADATA_ITEM
    return json.loads(path.read_text())


def restore_params(step_dir: str, config: ModelConfig, shardings: Any = None) -> Any:
    """Restores only the parameters of a step dir (the optimizer state is not read); a relative ``step_dir`` is
    taken from the working directory (orbax itself only reads absolute paths)."""
    target = _abstract_params(config, shardings)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        out = ckptr.restore(epath.Path(paths.resolve(step_dir)),
                            args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(target)}))
    return out[PARAMS_ITEM]


def _load_folder(path: str, shardings: Any, scan_layers: bool | None) -> LoadedModel:
    """A transformers-format or params folder."""
    if files.is_url(path):
        raise params_io.CheckpointError(
            f"{path}: transformers-format and params folders are read from a local disk; copy it first, e.g. "
            f"`gsutil -m cp -r {path} .`, and give the local folder")
    overrides = {} if scan_layers is None else {"scan_layers": scan_layers}
    read = hf.load_hf_checkpoint if hf.is_hf_dir(path) else params_io.load_params
    config, params = read(path, **overrides)
    if shardings is not None:
        params = jax.device_put(params, shardings)
    name = vocabulary_name(path)
    return LoadedModel(config=config, params=params, vocabulary=get_vocabulary(name), vocabulary_name=name,
                       step=None, path=path, metadata={"vocabulary": name})


def _load_gguf(path: str, shardings: Any, scan_layers: bool | None) -> LoadedModel:
    """A GGUF file: weights and config from its tensors and metadata, its own tokenizer and chat template."""
    overrides = {} if scan_layers is None else {"scan_layers": scan_layers}
    config, params = gguf.load_gguf_checkpoint(path, **overrides)
    if shardings is not None:
        params = jax.device_put(params, shardings)
    name = f"gguf:{path}"
    return LoadedModel(config=config, params=params, vocabulary=get_vocabulary(name), vocabulary_name=name,
                       step=None, path=path, metadata={"vocabulary": name})


def load_model(path: str, *, step: int | None = None, shardings: Any = None,
               scan_layers: bool | None = None) -> LoadedModel:
    """Loads a trained model from an orbax model dir (newest readable step), a step dir, a transformers folder,
    a params folder (``textbooks convert --from-hf``/``--from-gguf``), a GGUF file or a registered name.

    Args:
        path: model dir, ``<model dir>/checkpoints``, one step dir, a transformers-format or a params folder,
            a ``.gguf`` file or a name of :data:`textbooks.data_packages.NAMED_CHECKPOINTS`; relative to the
            working directory, or ``gs://...`` (orbax checkpoints only).
        step: a specific step of a model dir (default: the newest readable one).
        shardings: optional tree of shardings for the parameters (default: the first local device).
        scan_layers: for transformers and params folders, the layer layout to load into (default: the
            folder's); an orbax checkpoint keeps the layout it was trained with.

    Returns:
        :class:`LoadedModel`; its vocabulary comes from the name recorded at training time (for transformers
        and params folders, the one ``textbooks convert`` recorded, else 'phi').

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (or not that step).
        textbooks.model.params_io.CheckpointError: a transformers or params folder or a GGUF file that cannot
            be read (the message names the file and what is wrong).
    """
    path = data_packages.resolve_checkpoint(path)
    path = paths.resolve(path)
    if not files.is_url(path) and is_gguf_file(path):
        return _load_gguf(path, shardings, scan_layers)
    if hf.is_hf_dir(path) or params_io.is_params_dir(path):
        return _load_folder(path, shardings, scan_layers)
    candidates = list(_candidate_step_dirs(path))
    if step is not None:
        candidates = [c for c in candidates if c.name == str(step)]
        if not candidates:
            raise FileNotFoundError(f"no checkpoint for step {step} under {path}")
    errors = []
    for step_dir in candidates:
        try:
            metadata = read_metadata(str(step_dir))
            config = ModelConfig.from_dict(metadata["model_config"])
            params = restore_params(str(step_dir), config, shardings)
        except Exception as e:  # noqa: BLE001 - try the previous step
            errors.append(f"{step_dir}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            log.warning("cannot load %s (%s); trying the previous step", step_dir, errors[-1])
            continue
        name = metadata.get("vocabulary", DEFAULT_VOCABULARY)
        return LoadedModel(config=config, params=params, vocabulary=get_vocabulary(name), vocabulary_name=name,
                           step=int(metadata.get("step", -1)), path=str(step_dir), metadata=metadata)
    raise FileNotFoundError(f"no loadable checkpoint under {path}: " + "; ".join(errors))
