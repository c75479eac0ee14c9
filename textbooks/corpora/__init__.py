"""Builders of the local real corpora, one per data role (see :mod:`textbooks.corpora.build`)."""
