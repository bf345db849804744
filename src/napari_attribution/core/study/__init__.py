"""Can this study answer its question: design, shortcut and split checks, scores, traps.

Study-design check before training (:mod:`.design`), the brightness shortcut check
(:mod:`.shortcut`), train/validation splits by held-out unit (:mod:`.splits`),
class-balanced classification scores (:mod:`.classification`) and known-answer trap plates
(:mod:`.traps`). May import ``models``, ``data`` and ``runtime``.
"""
