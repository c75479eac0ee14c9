"""Data files shipped with the library: the phi tokenizer's added tokens and the spm8k SentencePiece model."""
