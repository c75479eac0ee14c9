"""Rubric prompts (data files) for the LLM judge of :mod:`textbooks.curate.judge`."""
