"""Curation of training data as Apache Beam stages (phi-1 / phi-1.5 / FineWeb-Edu / DCLM style).

Stages, each usable alone from Python or as a Beam transform (all return the same
:data:`~textbooks.curate.stages.StageOutputs`), composed by :func:`pipeline.curate`, the gin entry point of
``textbooks curate --gin_file=experiments/curate/<x>.gin`` (named after its verb, like every verb's):

* :mod:`.input_specs` / :mod:`.io` / :mod:`.writers` — what a run reads (shards, JSONL, Parquet, text
  folders, source trees, data roles); the readers, whose unreadable input goes to ``rejects`` with a reason;
  the writers of shards, a manifest and side files;
* :mod:`.heuristics` — Gopher quality and repetition rules, C4 rules, code rules;
* :mod:`.dedup` — exact and MinHash LSH near-duplicate removal;
* :mod:`.decontam` (+ :mod:`.code_similarity`) — benchmark n-gram overlap and phi-1's embedding + AST check;
* :mod:`.judge` — LLM rubric scores (0–5) through an OpenAI-compatible endpoint;
* :mod:`.encoder` / :mod:`.embeddings` / :mod:`.classifier` / :mod:`.training` — MiniLM (JAX) or phi
  embeddings and the scikit-learn educational-value classifier;
* :mod:`.report` — counts per stage and reason, reconciliation, histograms, samples.

Nothing heavy is imported here; import the submodules you need.
"""
