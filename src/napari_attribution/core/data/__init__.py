"""Data in memory: the :class:`~.dataset.ImageSet`, per-channel normalisation,
segmentation and object crops, overlapping tiles, and synthetic sets and plates with
known answers.
May import ``runtime`` only.
"""
