"""Render the extension icon: surfaces of a synthetic glioma segmentation inside a brain outline.

Usage: python Resources/make_icon.py  (needs numpy and vtk; renders off screen)
Writes Resources/BrainTumorSeg.png and BrainTumorSeg/Resources/Icons/BrainTumorSeg.png,
128x128 RGBA. Segment colours come from BrainTumorSegLib.labels, the single label definition.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "BrainTumorSeg"))

from BrainTumorSegLib.labels import LABEL_BY_KEY  # noqa: E402 - needs the path set above

SIZE = 128
OUTPUTS = (ROOT / "Resources" / "BrainTumorSeg.png",
           ROOT / "BrainTumorSeg" / "Resources" / "Icons" / "BrainTumorSeg.png")  # fmt: skip


def synthetic_case(n: int = 96) -> dict[str, np.ndarray]:
    """Nested masks: brain, edema, tumour core, enhancing rim (a smooth, lobed tumour)."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    brain = (x / 0.78) ** 2 + (y / 0.95) ** 2 + (z / 0.72) ** 2 < 1
    centre = np.array([0.18, -0.05, 0.12])
    d = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    lobes = 0.06 * np.sin(5 * np.arctan2(y - centre[1], x - centre[0])) * np.cos(3 * z)
    edema = (d < 0.46 + lobes) & brain
    enhancing = d < 0.27 + 0.5 * lobes
    necrosis = d < 0.17
    return {"brain": brain, "ED": edema, "ET": enhancing & ~necrosis, "NCR": necrosis}


def surface(mask: np.ndarray):
    """Smoothed iso-surface of a binary mask as vtkPolyData."""
    import vtk
    from vtk.util import numpy_support

    image = vtk.vtkImageData()
    image.SetDimensions(*mask.shape[::-1])
    scalars = numpy_support.numpy_to_vtk(mask.astype(np.float32).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    blur = vtk.vtkImageGaussianSmooth()
    blur.SetInputData(image)
    blur.SetStandardDeviations(1.2, 1.2, 1.2)
    contour = vtk.vtkFlyingEdges3D()
    contour.SetInputConnection(blur.GetOutputPort())
    contour.SetValue(0, 0.5)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(contour.GetOutputPort())
    normals.Update()
    return normals.GetOutput()


def render(path_list: tuple[Path, ...] = OUTPUTS, size: int = SIZE) -> None:
    import vtk

    masks = synthetic_case()
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0, 0, 0)
    renderer.SetBackgroundAlpha(0.0)
    renderer.SetUseDepthPeeling(True)
    styles = {  # key: (colour, opacity)
        "brain": ((0.82, 0.80, 0.86), 0.22),
        "ED": (LABEL_BY_KEY["ED"].color, 0.3),
        # Half-transparent enhancing rim so that the necrotic core inside shows through.
        "ET": (LABEL_BY_KEY["ET"].color, 0.4),
        "NCR": (LABEL_BY_KEY["NCR"].color, 1.0),
    }
    for key, (color, opacity) in styles.items():
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(surface(masks[key]))
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        actor.GetProperty().SetOpacity(opacity)
        actor.GetProperty().SetSpecular(0.3)
        renderer.AddActor(actor)
    camera = renderer.GetActiveCamera()
    camera.Azimuth(35)
    camera.Elevation(20)
    renderer.ResetCamera()
    camera.Zoom(1.35)

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetAlphaBitPlanes(1)
    window.SetMultiSamples(0)
    window.SetSize(size * 2, size * 2)  # render large, shrink: smoother edges
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGBA()
    grab.ReadFrontBufferOff()
    grab.Update()
    shrink = vtk.vtkImageResize()
    shrink.SetInputConnection(grab.GetOutputPort())
    shrink.SetOutputDimensions(size, size, 1)
    for path in path_list:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(shrink.GetOutputPort())
        writer.Write()
        print(f"wrote {path}")


if __name__ == "__main__":
    render()
