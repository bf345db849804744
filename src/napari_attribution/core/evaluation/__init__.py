"""Scores of attribution maps: how faithful a map is to the model.

Attribution metrics (:mod:`.metrics`: deletion, insertion, localisation, randomisation),
ROAD imputation (:mod:`.road`), curves on tiled fields (:mod:`.tiled_curves`) and the methods
x metrics table (:mod:`.comparison`). May import every other core subpackage.
"""
