"""``python -m napari_attribution.cli``: the same as the ``napari-attribution`` command."""

import sys

from . import main

sys.exit(main())
