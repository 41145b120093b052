"""BrainTumorSeg core: glioma segmentation on multi-parametric MRI, from files to files.

Plain Python (never imports Slicer or Qt): the command-line tool, the Python API and the
worker process that the 3D Slicer module launches.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "segment", "SegmentationResult"]


def __getattr__(name: str):  # lazy, so that `python -m BrainTumorSegLib --help` starts fast
    if name in ("segment", "SegmentationResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
