"""Layer 2 - clinical text logic without models: the CheXpert-style labeler, the entity graph, radiologist style
groups, factual corruptions and the draft checks.

Imports :mod:`radimpress_lib.core` and :mod:`radimpress_lib.data`.
"""
