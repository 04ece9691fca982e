"""``python -m napari_cellunet`` = the ``cellunet`` command."""

import sys

from .cli import main

sys.exit(main())
