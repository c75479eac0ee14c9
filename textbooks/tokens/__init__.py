"""Token-level data preparation below the mixtures: packing documents into rows (:mod:`.packing`) and the
token counts of a role's split under a vocabulary (:mod:`.stats`), both used by :mod:`mixtures.mixing`.

This package imports only the data layer and the vocabularies; the seqio input pipeline that feeds
training is :mod:`textbooks.inputs`.
"""
