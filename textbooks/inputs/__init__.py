"""The seqio input pipeline that feeds training and evaluation, above :mod:`mixtures`.

* :mod:`.pipeline`: per-host batches of a mixture or task (:func:`~.pipeline.make_train_iterator`, resumable
  from ``get_state``; :func:`~.pipeline.make_eval_datasets`, one packed validation set per component).
* :mod:`.converters`: :class:`~.converters.LMPackingFeatureConverter`, packed rows to decoder-only features.
* :mod:`.cache`: tokenize role tasks once with Beam into a seqio cache (``python -m textbooks.inputs.cache``).
* :mod:`.tfds_builders`: the ``textbooks_corpus/<role>`` TFDS build (``python -m textbooks.inputs.tfds_builders``).

Nothing below this package imports it: the mixtures it reads, packing and token statistics
(:mod:`textbooks.tokens`) and the shard format (:mod:`textbooks.data`) sit under it.
"""
