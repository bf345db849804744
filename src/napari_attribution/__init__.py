"""napari-attribution: why does a classifier of multichannel microscopy decide what it decides?

DCMIX answers "which channels matter", PCIM "which pixels matter".
"""

__version__ = "0.1.0"
