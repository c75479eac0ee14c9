"""A vocabulary's files inside a transformers checkpoint folder, and the vocabulary such a folder names.

``textbooks convert --to-hf`` writes, next to ``config.json`` and the weights:

* for ``'phi'``: ``tokenizer.json`` (the byte-level BPE with codegen's added tokens, as built by
  :func:`textbooks.vocab.phi.build_tokenizer`) and ``tokenizer_config.json`` (``CodeGenTokenizer``, with
  ``<|endoftext|>`` as bos/eos/unk), so that ``transformers.AutoTokenizer.from_pretrained(folder)`` gives the
  same ids as the project's vocabulary;
* for SentencePiece vocabularies (``'spm8k'``, ``'spm:PATH'``): the model file as ``spm.model``, to be loaded
  with ``sentencepiece.SentencePieceProcessor(model_file=...)`` or ``seqio.SentencePieceVocabulary``. No
  transformers tokenizer config is written for them: transformers' SentencePiece classes (Llama, T5) add a
  dummy prefix, an end-of-sequence token or their own whitespace handling and would give other ids than the
  whitespace-preserving models trained here, so ``AutoTokenizer`` fails loudly instead of tokenizing wrongly;
* for ``'byte'``: nothing (the ids are the UTF-8 bytes plus 3, seqio's ``ByteVocabulary``).

The vocabulary's name goes into ``config.json`` under :data:`CONFIG_KEY` (transformers keeps unknown keys), so
that loading the folder back (``load_model``, ``textbooks serve``, ``textbooks eval``) uses the same
vocabulary. Folders without the key (e.g. a downloaded phi-1.5) are read with the ``'phi'`` vocabulary.
``textbooks convert --from-hf`` carries a recorded vocabulary (name and files) into the params folder it
writes, whose ``textbooks_config.json`` records it under ``vocabulary``.
"""

from __future__ import annotations

import json
import os

from textbooks.model import hf, params_io

CONFIG_KEY = hf.VOCABULARY_KEY
SPM_FILE = "spm.model"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DEFAULT_VOCABULARY = "phi"


def save_tokenizer(name: str, out_dir: str, *, max_len: int | None = None) -> tuple[str, list[str]]:
    """Writes the files of vocabulary ``name`` into ``out_dir`` (see the module docstring).

    Args:
        name: ``'phi'``, ``'spm8k'``, ``'byte'`` or ``'spm:PATH'``.
        out_dir: an existing folder.
        max_len: ``model_max_length`` for transformers' tokenizer config (phi only).

    Returns:
        ``(name to record in config.json, file names written)``; a ``spm:PATH`` vocabulary is recorded as
        ``'spm:spm.model'``, relative to the folder, so the folder can move.

    Raises:
        ValueError: an unknown vocabulary name.
        FileNotFoundError: a SentencePiece model file is missing.
    """
    from textbooks.vocab import get_vocabulary

    get_vocabulary(name)  # an unknown name or a missing model file fails here, before anything is touched
    spm_model = None if name in ("phi", "byte") else _read_spm_model(name)
    for stale in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPM_FILE):  # of a previous export
        if os.path.isfile(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    if spm_model is not None:
        with open(os.path.join(out_dir, SPM_FILE), "wb") as f:
            f.write(spm_model)
        return (name if name == "spm8k" else f"spm:{SPM_FILE}"), [SPM_FILE]
    if name == "byte":
        return name, []
    from textbooks.vocab.phi import EOS_TOKEN, build_tokenizer

    build_tokenizer().save(os.path.join(out_dir, TOKENIZER_FILE))
    config = {"tokenizer_class": "CodeGenTokenizer", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN,
              "unk_token": EOS_TOKEN, "add_prefix_space": False, "add_bos_token": False,
              "clean_up_tokenization_spaces": False}
    if max_len:
        config["model_max_length"] = int(max_len)
    with open(os.path.join(out_dir, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return name, [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE]


def _read_spm_model(name: str) -> bytes:
    from textbooks.vocab.spm import spm8k_path

    source = spm8k_path() if name == "spm8k" else name[len("spm:"):]
    if not os.path.isfile(source):
        raise FileNotFoundError(f"SentencePiece model {source!r} (vocabulary {name!r}) not found")
    with open(source, "rb") as f:
        return f.read()


def recorded_vocabulary(folder: str) -> str | None:
    """The vocabulary a checkpoint folder records, or None: a transformers folder's ``config.json``
    (:data:`CONFIG_KEY`) or a params folder's ``textbooks_config.json`` (``vocabulary``).

    A relative ``spm:FILE`` is resolved against ``folder``.

    Raises:
        ValueError: the recorded value is not a non-empty string (names the file and key).
    """
    for file, key in ((hf.CONFIG_NAME, hf.VOCABULARY_KEY), (params_io.CONFIG_FILE, params_io.VOCABULARY_KEY)):
        path = os.path.join(folder, file)
        try:
            with open(path, encoding="utf-8") as f:
                body = json.load(f)
        except (OSError, ValueError):
            continue
        recorded = body.get(key) if isinstance(body, dict) else None
        if recorded is None:
            continue
        if not isinstance(recorded, str) or not recorded:
            raise ValueError(f"{path}: {key!r} must be a vocabulary name such as 'phi' or 'spm8k', "
                             f"got {recorded!r}")
        if recorded.startswith("spm:") and not os.path.isabs(recorded[len("spm:"):]):
            return "spm:" + os.path.join(os.path.abspath(folder), recorded[len("spm:"):])
        return recorded
    return None


def vocabulary_name(folder: str) -> str:
    """:func:`recorded_vocabulary`, or ``'phi'`` when the folder records none (e.g. a downloaded phi-1.5)."""
    return recorded_vocabulary(folder) or DEFAULT_VOCABULARY
