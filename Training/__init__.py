"""BrainTumorSeg training tools: prepare a dataset, fit, evaluate and export a 3D U-Net.

Run ``python -m Training --help``. Preprocessing, label handling and model metadata come from
``BrainTumorSegLib`` so that training and inference cannot disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

try:  # normally installed (editable) from the repository's pyproject
    import BrainTumorSegLib  # noqa: F401
except ModuleNotFoundError:  # a plain checkout: the library lives next to this folder
    sys.path.insert(0, str(REPO_ROOT / "BrainTumorSeg"))

__version__ = "0.1.0"
