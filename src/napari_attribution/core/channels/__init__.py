"""Channel importance: which input channels the model needs.

The DCMIX mixing layer (:mod:`.dcmix`) and CNN backbones, training (:mod:`.training`) with
augmentation, the importance readouts with their ablation check (:mod:`.importance`),
post-hoc ablation/permutation for any model (:mod:`.posthoc`) and seed repeats and retraining
checks (:mod:`.repeats`). May import ``study``, ``models``, ``data`` and ``runtime``.
"""
