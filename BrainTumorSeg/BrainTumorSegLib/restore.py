"""Carrying network outputs from the working grid back onto the user's reference grid.

Cropping, padding, re-orientation and resampling were all changes of grid (see
:mod:`preprocess`), so a single world-space resampling undoes them together; voxels outside
the working grid (outside the brain's bounding box) get zero.
"""

from __future__ import annotations

import numpy as np

from .conform import resample_to_grid
from .geometry import Grid


def restore_to_input_grid(channels: np.ndarray, working: Grid, reference: Grid) -> np.ndarray:
    """Resample (R, X, Y, Z) outputs from ``working`` onto ``reference`` (trilinear, zero fill)."""
    return resample_to_grid(channels, working, reference, order=1, cval=0.0).astype(
        np.float32, copy=False
    )
