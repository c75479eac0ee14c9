"""Vocabularies: the tokenizers the project trains with, and the facts about them that need no tokenizer.

The vocabularies, by name (:func:`textbooks.vocab.registry.get_vocabulary` returns them as seqio
Vocabularies that work in Python and in tf.data):

* ``'phi'``: the phi-1 / phi-1.5 tokenizer (codegen-350M-mono's byte-level BPE, 50,295 tokens, end-of-text
  ``<|endoftext|>`` = 50256); see :mod:`textbooks.vocab.phi`.
* ``'spm8k'``: the project's 8,192-piece SentencePiece BPE trained on Python docs and standard-library code
  with whitespace preserved (pad 0, end-of-text 1, unk 2, byte fallback); see :mod:`textbooks.vocab.spm`.
* ``'spm:PATH'``: any SentencePiece model file, e.g. one trained with ``textbooks vocab train``.
* ``'hf:PATH'``: an HF ``tokenizers`` ``tokenizer.json`` file, or a folder holding one (with transformers'
  ``tokenizer_config.json`` giving the special tokens and chat template); see :mod:`textbooks.vocab.hf_tokenizer`.
* ``'gguf:PATH'``: the tokenizer of a GGUF model file (byte-level BPE, e.g. SmolLM2's), with the file's special
  tokens and chat template; see :mod:`textbooks.vocab.gguf_tokenizer`. Chat templates render with
  :mod:`textbooks.vocab.chat_template`.
* ``'byte'``: seqio's ``ByteVocabulary`` (UTF-8 bytes, 259 ids; fast, for tests and byte-level ablations).

This module holds the names and sizes of the built-in vocabularies, so that sizing or checking a model does
not load a tokenizer (nor TensorFlow, which the tokenizers need): it imports nothing.
"""

VOCABULARY_NAMES: tuple[str, ...] = ("phi", "spm8k", "byte")
PHI_VOCAB_SIZE = 50295  # GPT-2's 50,257 byte-level BPE tokens + codegen's 38 whitespace tokens
PHI_PADDED_VOCAB_SIZE = 51200  # embedding rows of the released phi-1 / phi-1.5: the phi ids, padded
SPM8K_VOCAB_SIZE = 8192
BYTE_VOCAB_SIZE = 259  # 256 bytes + pad, eos, unk
VOCABULARY_SIZES: dict[str, int] = {"phi": PHI_VOCAB_SIZE, "spm8k": SPM8K_VOCAB_SIZE, "byte": BYTE_VOCAB_SIZE}
