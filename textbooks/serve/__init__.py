"""Serving: the project's checkpoints behind an OpenAI-compatible HTTP API, and the client for such APIs.

* :mod:`~textbooks.serve.engine`: a checkpoint behind a request queue that batches concurrent requests into
  KV-cache decoding.
* :mod:`~textbooks.serve.server`: the aiohttp server behind ``textbooks serve`` (request validation, OpenAI
  responses, streaming).
* :mod:`~textbooks.serve.client`: the async OpenAI-compatible client (retries, Retry-After, streaming, usage,
  cost, concurrency limit, API key from the environment), used by ``textbooks generate`` and the curation judge;
  :mod:`~textbooks.serve.answers` reads the servers' answers for it.

Importing this package is cheap; import the submodules for their contents.
"""
