"""Pure computational core: torch and numpy only (no Qt, no napari, never the package root).

Subpackages, by concept (imports point from the left of this list to the right, never back):

- :mod:`.evaluation`: how faithful maps are: deletion/insertion, ROAD, randomisation
  checks, curves on tiles and the methods x metrics table.
- :mod:`.attribution`: which pixels matter: PCIM (gradient and forward-only), whole fields,
  Captum baselines, the evidence check, contrastive targets and the ``explain`` entry point.
- :mod:`.channels`: which channels matter: the DCMIX layer, backbones, training, channel
  importance readouts, post-hoc checks and repeats.
- :mod:`.study`: can the study answer its question: design checks, the shortcut check,
  splits by held-out unit, class-balanced classification scores and known-answer traps.
- :mod:`.models`: one :class:`~.models.classifier.Classifier` for every model face, and
  looking at new images the way the model saw its training images.
- :mod:`.data`: the in-memory dataset, normalisation, segmentation, object crops, tiles and
  the synthetic data with known answers.
- :mod:`.runtime`: leaves shared by all: errors, progress events, input validation,
  devices, memory (allocator, peak memory) and the package version.
"""
