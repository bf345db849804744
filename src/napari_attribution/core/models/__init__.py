"""One model object for every face (:mod:`.classifier`) and preparing new images the way
the model saw its training images (:mod:`.inference`). May import ``data`` and ``runtime``.
"""
