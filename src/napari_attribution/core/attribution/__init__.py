"""Pixel attribution: which pixels of an image drive the model's call.

``explain`` (the one entry point over a registry of methods), PCIM with gradients
(:mod:`.pcim`) and forward-only (:mod:`.pcim_blackbox`), whole fields of view
(:mod:`.field`), Captum baselines (:mod:`.baselines`), the evidence check (:mod:`.evidence`)
and contrastive targets (:mod:`.contrast`). May import ``channels``, ``study``, ``models``,
``data`` and ``runtime``.
"""
