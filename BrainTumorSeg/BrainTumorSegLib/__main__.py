"""``python -m BrainTumorSegLib ...``: how the 3D Slicer module launches the worker."""

import sys

from .cli import main

sys.exit(main())
