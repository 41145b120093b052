"""A small test double of the 3D Slicer API used by ``BrainTumorSeg.py``.

Only the calls the module makes are modelled, with Slicer's conventions (from
``shared/docs/slicer-notes.md``): volume arrays are indexed [k, j, i]; a volume's geometry is
its IJK-to-RAS matrix, which equals the NIfTI affine of the same grid; files written by
``exportNode``/``saveNode`` are real NIfTI files, so the worker reads what Slicer would write.

``install()`` puts fake ``slicer``, ``qt``, ``vtk`` and ``ctk`` modules into ``sys.modules``
and returns the fake ``slicer``; ``uninstall()`` removes them again.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

MODULE_NAMES = ("slicer", "qt", "vtk", "ctk")


# --- vtk -----------------------------------------------------------------------------------


class vtkMatrix4x4:
    def __init__(self) -> None:
        self.m = np.eye(4)

    def SetElement(self, i: int, j: int, value: float) -> None:
        self.m[i, j] = value

    def GetElement(self, i: int, j: int) -> float:
        return float(self.m[i, j])

    def DeepCopy(self, other: vtkMatrix4x4) -> None:
        self.m = other.m.copy()


class _vtkArray:
    def __init__(self) -> None:
        self._name = ""
        self._values: list[Any] = []

    def SetName(self, name: str) -> None:
        self._name = name

    def GetName(self) -> str:
        return self._name

    def InsertNextValue(self, value: Any) -> int:
        self._values.append(value)
        return len(self._values) - 1

    def GetValue(self, index: int) -> Any:
        return self._values[index]

    def GetNumberOfTuples(self) -> int:
        return len(self._values)


class vtkStringArray(_vtkArray):
    pass


class vtkDoubleArray(_vtkArray):
    pass


class vtkTable:
    def __init__(self) -> None:
        self.columns: list[_vtkArray] = []

    def AddColumn(self, column: _vtkArray) -> None:
        self.columns.append(column)

    def RemoveAllColumns(self) -> None:
        self.columns = []

    def GetColumnByName(self, name: str) -> _vtkArray | None:
        return next((c for c in self.columns if c.GetName() == name), None)

    def GetNumberOfRows(self) -> int:
        return self.columns[0].GetNumberOfTuples() if self.columns else 0

    def GetNumberOfColumns(self) -> int:
        return len(self.columns)


# --- MRML nodes ----------------------------------------------------------------------------


class Node:
    CLASS_NAMES: tuple[str, ...] = ("vtkMRMLNode",)

    def __init__(self) -> None:
        self.scene: Scene | None = None
        self._id = ""
        self._name = ""
        self._references: dict[str, str] = {}
        self.modifiedCount = 0
        self.parentTransform = None

    def GetID(self) -> str:
        return self._id

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name

    def GetClassName(self) -> str:
        return self.CLASS_NAMES[0]

    def IsA(self, class_name: str) -> bool:
        return class_name in self.CLASS_NAMES

    def Modified(self) -> None:
        self.modifiedCount += 1

    def SetNodeReferenceID(self, role: str, node_id: str) -> None:
        self._references[role] = node_id

    def GetNodeReference(self, role: str) -> Node | None:
        node_id = self._references.get(role)
        return self.scene.GetNodeByID(node_id) if node_id and self.scene else None

    def GetParentTransformNode(self) -> Any:
        return self.parentTransform

    def CreateDefaultDisplayNodes(self) -> None:
        self.displayNode = DisplayNode()

    def GetDisplayNode(self) -> DisplayNode:
        return self.displayNode


class DisplayNode:
    def __init__(self) -> None:
        self.visible3D = False

    def SetVisibility3D(self, visible: bool) -> None:
        self.visible3D = bool(visible)


class _ImageData:
    def __init__(self, node: ScalarVolumeNode) -> None:
        self.node = node

    def GetDimensions(self) -> tuple[int, int, int]:
        k, j, i = self.node.array.shape
        return (i, j, k)


class ScalarVolumeNode(Node):
    CLASS_NAMES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeNode", "vtkMRMLNode")

    def __init__(self) -> None:
        super().__init__()
        self.array = np.zeros((1, 1, 1), dtype=np.float32)  # [k, j, i]
        self.ijkToRas = np.eye(4)

    def GetImageData(self) -> _ImageData:
        return _ImageData(self)

    def GetSpacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.ijkToRas[:3, :3], axis=0))

    def GetIJKToRASMatrix(self, matrix: vtkMatrix4x4) -> None:
        matrix.m = self.ijkToRas.copy()

    def SetIJKToRASMatrix(self, matrix: vtkMatrix4x4) -> None:
        self.ijkToRas = matrix.m.copy()


class LabelMapVolumeNode(ScalarVolumeNode):
    CLASS_NAMES = ("vtkMRMLLabelMapVolumeNode", *ScalarVolumeNode.CLASS_NAMES)


class Segment:
    TAG_TERMINOLOGY = "TerminologyEntry"

    def __init__(self, name: str, color: tuple[float, float, float]) -> None:
        self._name = name
        self._color = tuple(color)
        self._tags: dict[str, str] = {}
        self.mask: np.ndarray | None = None  # [k, j, i] on the reference geometry
        self.maskGeometry: np.ndarray | None = None

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name

    def GetColor(self) -> tuple[float, ...]:
        return self._color

    def SetColor(self, r: float, g: float, b: float) -> None:
        self._color = (r, g, b)

    @staticmethod
    def GetTerminologyEntryTagName() -> str:
        return Segment.TAG_TERMINOLOGY

    def SetTag(self, name: str, value: str) -> None:
        self._tags[name] = value

    def GetTag(self, name: str) -> str:
        return self._tags.get(name, "")


class Segmentation:
    def __init__(self) -> None:
        self.segments: dict[str, Segment] = {}

    def AddEmptySegment(self, segment_id: str = "", name: str = "", color=None) -> str:
        segment_id = segment_id or f"Segment_{len(self.segments) + 1}"
        while segment_id in self.segments:  # Slicer makes the id unique
            segment_id += "_1"
        self.segments[segment_id] = Segment(name or segment_id, color or (0.5, 0.5, 0.5))
        return segment_id

    def GetSegment(self, segment_id: str) -> Segment | None:
        return self.segments.get(segment_id)

    def RemoveSegment(self, segment_id: str) -> None:
        del self.segments[segment_id]

    def GetSegmentIdBySegmentName(self, name: str) -> str:
        return next((k for k, s in self.segments.items() if s.GetName() == name), "")

    def GetNumberOfSegments(self) -> int:
        return len(self.segments)

    def GetNthSegmentID(self, index: int) -> str:
        return list(self.segments)[index]


class SegmentationNode(Node):
    CLASS_NAMES = ("vtkMRMLSegmentationNode", "vtkMRMLNode")

    def __init__(self) -> None:
        super().__init__()
        self.segmentation = Segmentation()
        self.referenceGeometry: tuple[tuple[int, ...], np.ndarray] | None = None
        self.hasClosedSurface = False

    def GetSegmentation(self) -> Segmentation:
        return self.segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume: ScalarVolumeNode) -> None:
        self.referenceGeometry = (volume.array.shape, volume.ijkToRas.copy())

    def CreateClosedSurfaceRepresentation(self) -> bool:
        self.hasClosedSurface = True
        return True


class TableNode(Node):
    CLASS_NAMES = ("vtkMRMLTableNode", "vtkMRMLNode")

    def __init__(self) -> None:
        super().__init__()
        self.table = vtkTable()

    def GetTable(self) -> vtkTable:
        return self.table

    def GetNumberOfRows(self) -> int:
        return self.table.GetNumberOfRows()


class ScriptedModuleNode(Node):
    CLASS_NAMES = ("vtkMRMLScriptedModuleNode", "vtkMRMLNode")


NODE_CLASSES: dict[str, type[Node]] = {
    "vtkMRMLScalarVolumeNode": ScalarVolumeNode,
    "vtkMRMLLabelMapVolumeNode": LabelMapVolumeNode,
    "vtkMRMLSegmentationNode": SegmentationNode,
    "vtkMRMLTableNode": TableNode,
    "vtkMRMLScriptedModuleNode": ScriptedModuleNode,
}


class SubjectHierarchy:
    """Items are integers; every node gets one, parented to the scene item (1) by default."""

    SCENE_ITEM = 1

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.parents: dict[int, int] = {}
        self.itemOfNode: dict[str, int] = {}
        self.names: dict[int, str] = {self.SCENE_ITEM: "Scene"}
        self._next = itertools.count(2)

    def _register(self, node: Node) -> None:
        item = next(self._next)
        self.itemOfNode[node.GetID()] = item
        self.parents[item] = self.SCENE_ITEM

    def GetSceneItemID(self) -> int:
        return self.SCENE_ITEM

    def CreateFolderItem(self, parent: int, name: str) -> int:
        item = next(self._next)
        self.parents[item] = parent
        self.names[item] = name
        return item

    def GetItemByDataNode(self, node: Node) -> int:
        return self.itemOfNode.get(node.GetID(), 0)

    def GetItemParent(self, item: int) -> int:
        return self.parents.get(item, 0)

    def SetItemParent(self, item: int, parent: int) -> None:
        self.parents[item] = parent


class Scene:
    NodeAddedEvent = "NodeAddedEvent"
    NodeRemovedEvent = "NodeRemovedEvent"
    StartCloseEvent = "StartCloseEvent"
    EndCloseEvent = "EndCloseEvent"

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self._counter = itertools.count(1)
        self.subjectHierarchy = SubjectHierarchy(self)

    def AddNewNodeByClass(self, class_name: str, name: str = "") -> Node:
        node = NODE_CLASSES[class_name]()
        node.SetName(name or class_name)
        return self.AddNode(node)

    def AddNode(self, node: Node) -> Node:
        node._id = f"{node.GetClassName()}{next(self._counter)}"
        node.scene = self
        self.nodes.append(node)
        self.subjectHierarchy._register(node)
        return node

    def RemoveNode(self, node: Node | None) -> None:
        if node in self.nodes:
            self.nodes.remove(node)
            node.scene = None

    def GetNodeByID(self, node_id: str) -> Node | None:
        return next((n for n in self.nodes if n.GetID() == node_id), None)

    def GetNumberOfNodes(self) -> int:
        return len(self.nodes)

    def GetFirstNodeByClass(self, class_name: str) -> Node | None:
        return next((n for n in self.nodes if n.IsA(class_name)), None)

    def GenerateUniqueName(self, name: str) -> str:
        names = {n.GetName() for n in self.nodes}
        if name not in names:
            return name
        return next(f"{name}_{i}" for i in itertools.count(1) if f"{name}_{i}" not in names)

    def Clear(self, *_args: Any) -> None:
        self.nodes = []
        self.subjectHierarchy = SubjectHierarchy(self)


# --- slicer.util -----------------------------------------------------------------------------


def _make_util(state: types.SimpleNamespace) -> types.ModuleType:
    util = types.ModuleType("slicer.util")

    def scene() -> Scene:
        return state.slicer.mrmlScene

    def arrayFromVolume(node: ScalarVolumeNode) -> np.ndarray:
        return node.array  # a view, as in Slicer

    def updateVolumeFromArray(node: ScalarVolumeNode, array: np.ndarray) -> None:
        node.array = np.array(array, copy=True)

    def addVolumeFromArray(
        array: np.ndarray,
        ijkToRAS: Any = None,
        name: str | None = None,
        nodeClassName: str | None = None,
    ) -> ScalarVolumeNode:
        node = scene().AddNewNodeByClass(nodeClassName or "vtkMRMLScalarVolumeNode", name or "")
        node.array = np.array(array, copy=True)
        if ijkToRAS is not None:
            node.ijkToRas = (
                ijkToRAS.m.copy()
                if isinstance(ijkToRAS, vtkMatrix4x4)
                else (np.asarray(ijkToRAS, dtype=float))
            )
        return node

    def _write_nifti(node: ScalarVolumeNode, filename: str) -> bool:
        import nibabel as nib

        state.writes.append(filename)
        # Slicer's [k, j, i] array transposed is the file's [i, j, k] voxel array; the
        # IJK-to-RAS matrix is the NIfTI affine (both RAS+).
        image = nib.Nifti1Image(np.ascontiguousarray(node.array.transpose(2, 1, 0)), node.ijkToRas)
        image.set_qform(node.ijkToRas, code=1)
        image.set_sform(node.ijkToRas, code=1)
        nib.save(image, filename)
        return True

    def exportNode(node: Node, filename: str, properties: dict | None = None, world=False) -> bool:
        if world and node.GetParentTransformNode() is not None:
            raise NotImplementedError("the double does not harden transforms")
        return _write_nifti(node, filename)

    def saveNode(node: Node, filename: str, properties: dict | None = None) -> bool:
        node.storageFileName = filename  # unlike exportNode, saving changes the storage node
        return _write_nifti(node, filename)

    def loadLabelVolume(filename: str, properties: dict | None = None) -> LabelMapVolumeNode:
        import nibabel as nib

        image = nib.load(filename)
        node = scene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", Path(filename).name)
        node.array = np.asarray(image.dataobj).transpose(2, 1, 0).copy()
        node.ijkToRas = np.asarray(image.affine, dtype=float)
        return node

    def updateSegmentBinaryLabelmapFromArray(
        array: np.ndarray, segmentationNode: SegmentationNode, segmentId: str, referenceVolumeNode
    ) -> None:
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        if array.shape != referenceVolumeNode.array.shape:
            raise ValueError("array and reference volume shapes differ")
        segment.mask = np.array(array, copy=True)
        segment.maskGeometry = referenceVolumeNode.ijkToRas.copy()

    def arrayFromSegmentBinaryLabelmap(
        segmentationNode: SegmentationNode, segmentId: str, referenceVolumeNode=None
    ) -> np.ndarray:
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        if referenceVolumeNode is not None and not np.allclose(
            segment.maskGeometry, referenceVolumeNode.ijkToRas
        ):
            raise NotImplementedError("the double does not resample segments")
        return segment.mask

    def getNodesByClass(class_name: str) -> list[Node]:
        return [n for n in scene().nodes if n.IsA(class_name)]

    def pip_install(requirements: str) -> None:
        state.pip_calls.append(requirements)

    def confirmOkCancelDisplay(text: str, windowTitle: str = "", **_kwargs: Any) -> bool:
        state.dialogs.append(text)
        return state.confirm_answer

    def errorDisplay(text: str, windowTitle: str = "", **_kwargs: Any) -> None:
        state.dialogs.append(text)

    class VTKObservationMixin:
        def __init__(self) -> None:
            self.observations: list[tuple] = []

        def addObserver(self, obj, event, method, *_args) -> None:
            self.observations.append((obj, event, method))

        def removeObservers(self, *_args) -> None:
            self.observations = []

    for function in (
        arrayFromVolume, updateVolumeFromArray, addVolumeFromArray, exportNode, saveNode,
        loadLabelVolume, updateSegmentBinaryLabelmapFromArray, arrayFromSegmentBinaryLabelmap,
        getNodesByClass, pip_install, confirmOkCancelDisplay, errorDisplay,
    ):  # fmt: skip
        setattr(util, function.__name__, function)
    util.VTKObservationMixin = VTKObservationMixin
    return util


# --- qt ----------------------------------------------------------------------------------------


class _Signal:
    def __init__(self) -> None:
        self.slots: list = []

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def emit(self, *args) -> None:
        for slot in list(self.slots):
            slot(*args)


class QTimer:
    """Timers do not tick by themselves: tests call ``fire()`` where Qt's event loop would."""

    instances: list[QTimer] = []

    def __init__(self) -> None:
        self.timeout = _Signal()
        self.interval = 0
        self.active = False
        QTimer.instances.append(self)

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def start(self, *_args) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def isActive(self) -> bool:
        return self.active

    def fire(self) -> None:
        if self.active:
            self.timeout.emit()

    @staticmethod
    def singleShot(_ms: int, callback) -> None:
        callback()


class QSettings:
    store: dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return self.store.get(key, default)

    def setValue(self, key: str, value: Any) -> None:
        self.store[key] = value


def _make_qt() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    qt.QSettings = QSettings
    qt.Qt = types.SimpleNamespace(WaitCursor=3, ToolTipRole=3, ItemIsSelectable=1, ItemIsEnabled=32)

    def __getattr__(name: str) -> type:  # widgets are never exercised by the tests
        return type(name, (), {})

    qt.__getattr__ = __getattr__
    return qt


# --- slicer ------------------------------------------------------------------------------------


def _make_scripted_module(state: types.SimpleNamespace) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent

        def setup(self) -> None:
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            pass

        def getParameterNode(self) -> ScriptedModuleNode:
            scene = state.slicer.mrmlScene
            node = scene.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")
            return node or scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "BrainTumorSeg")

    class ScriptedLoadableModuleTest:
        def delayDisplay(self, message: str, *_args) -> None:
            pass

    for cls in (
        ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):  # fmt: skip
        setattr(module, cls.__name__, cls)
    return module


def _make_parameter_node_wrapper() -> types.ModuleType:
    """Typed fields with defaults, stored on the wrapped parameter node, as Slicer's does."""
    module = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices) -> None:
            self.choices = list(choices)

    class WithinRange:
        def __init__(self, minimum, maximum) -> None:
            self.minimum, self.maximum = minimum, maximum

    def parameterNodeWrapper(cls):
        annotations = dict(cls.__annotations__)
        defaults = {name: getattr(cls, name, None) for name in annotations}

        class Wrapped:
            __name__ = cls.__name__
            fields = annotations

            def __init__(self, node: Node) -> None:
                object.__setattr__(self, "parameterNode", node)
                store = node.__dict__.setdefault("_parameters", {})
                for name, default in defaults.items():
                    store.setdefault(name, default)

            def __getattr__(self, name: str) -> Any:
                store = self.parameterNode.__dict__["_parameters"]
                if name in store:
                    return store[name]
                raise AttributeError(name)

            def __setattr__(self, name: str, value: Any) -> None:
                if name not in annotations:
                    raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
                self.parameterNode.__dict__["_parameters"][name] = value

            def connectGui(self, ui) -> str:
                return "tag"

            def disconnectGui(self, tag) -> None:
                pass

        Wrapped.__doc__ = cls.__doc__
        return Wrapped

    module.Choice = Choice
    module.WithinRange = WithinRange
    module.parameterNodeWrapper = parameterNodeWrapper
    return module


class _SubjectHierarchyNodeClass:
    @staticmethod
    def GetSubjectHierarchyNode(scene: Scene) -> SubjectHierarchy:
        return scene.subjectHierarchy


def install() -> types.ModuleType:
    """Register the fake modules in ``sys.modules``; returns the fake ``slicer``."""
    state = types.SimpleNamespace(
        pip_calls=[], dialogs=[], writes=[], confirm_answer=True, slicer=None
    )
    slicer = types.ModuleType("slicer")
    slicer.double = state
    slicer.mrmlScene = Scene()
    slicer.app = types.SimpleNamespace(
        temporaryPath=tempfile.mkdtemp(prefix="slicer-double-"),
        processEvents=lambda: None,
        testingEnabled=lambda: True,
        layoutManager=lambda: None,
    )
    slicer.util = _make_util(state)
    slicer.ScriptedLoadableModule = _make_scripted_module(state)
    slicer.parameterNodeWrapper = _make_parameter_node_wrapper()
    slicer.vtkMRMLScalarVolumeNode = ScalarVolumeNode
    slicer.vtkMRMLSegmentationNode = SegmentationNode
    slicer.vtkMRMLSubjectHierarchyNode = _SubjectHierarchyNodeClass
    state.slicer = slicer

    vtk = types.ModuleType("vtk")
    vtk.vtkMatrix4x4 = vtkMatrix4x4
    vtk.vtkStringArray = vtkStringArray
    vtk.vtkDoubleArray = vtkDoubleArray
    vtk.vtkTable = vtkTable

    QSettings.store = {}
    QTimer.instances = []
    sys.modules.update(
        {
            "slicer": slicer,
            "slicer.util": slicer.util,
            "slicer.ScriptedLoadableModule": slicer.ScriptedLoadableModule,
            "slicer.parameterNodeWrapper": slicer.parameterNodeWrapper,
            "qt": _make_qt(),
            "vtk": vtk,
            "ctk": types.ModuleType("ctk"),
        }
    )
    return slicer


def uninstall() -> None:
    """Remove the fake modules (and the module under test, which bound them)."""
    for name in [*MODULE_NAMES, "slicer.util", "slicer.ScriptedLoadableModule",
                 "slicer.parameterNodeWrapper", "BrainTumorSeg"]:  # fmt: skip
        sys.modules.pop(name, None)


MODULE_DIR = Path(__file__).resolve().parent.parent / "BrainTumorSeg"


def import_module() -> types.ModuleType:
    """Import ``BrainTumorSeg.py`` against the installed double (fresh each time)."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    sys.modules.pop("BrainTumorSeg", None)
    import BrainTumorSeg

    return BrainTumorSeg


# --- A fake segmentation worker ------------------------------------------------------------------
#
# Run as ``python slicer_double.py segment --t1 F ... --output DIR --progress-json``. It speaks
# the worker's protocol (progress JSON lines, outputs, exit codes) without a network: the
# label map is the T1ce volume's values, and the other inputs must equal T1ce plus a known
# offset, which proves each file reached its own option. FAKE_WORKER_MODE selects a behaviour.

SEQUENCE_OFFSETS = {"t1": 10.0, "t1ce": 0.0, "t2": 20.0, "flair": 30.0}


def _emit(stage: str, fraction: float, message: str, **extra: Any) -> None:
    import json

    print(json.dumps({"stage": stage, "fraction": fraction, "message": message, **extra}))
    sys.stdout.flush()


def fake_worker(argv: list[str]) -> int:
    import argparse
    import json
    import os
    import subprocess
    import time

    import nibabel as nib

    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    for name in ("t1", "t1ce", "t2", "flair", "output", "reference", "labels", "bias-correction",
                 "model", "channels", "threads", "components", "raw"):  # fmt: skip
        parser.add_argument(f"--{name}")
    for flag in ("tta", "no-tta", "no-overlay", "progress-json"):
        parser.add_argument(f"--{flag}", action="store_true")
    args = parser.parse_args(argv)
    mode = os.environ.get("FAKE_WORKER_MODE", "ok")
    Path(os.environ.get("FAKE_WORKER_ARGS", os.devnull)).write_text(json.dumps(argv))
    _emit("load", 0.05, "Loading images")
    print("a stray warning line from some library")
    if mode == "error":
        print("error: t2: image is 2D (240x240x1); a 3D volume is needed", file=sys.stderr)
        _emit("error", 1.0, "t2: image is 2D (240x240x1); a 3D volume is needed")
        return 2
    if mode == "crash":
        print('Traceback (most recent call last):\n  File "x.py", line 1', file=sys.stderr)
        print("ZeroDivisionError: division by zero", file=sys.stderr)
        return 1
    if mode == "slow":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path(os.environ["FAKE_WORKER_PIDFILE"]).write_text(f"{os.getpid()} {child.pid}")
        for step in range(1200):
            _emit("infer", min(0.99, 0.1 + step / 1200), f"Inference step {step}")
            time.sleep(0.1)
        return 0
    reference = nib.load(args.t1ce)
    codes = np.asarray(reference.dataobj)
    for sequence, offset in SEQUENCE_OFFSETS.items():
        image = nib.load(getattr(args, sequence))
        if not np.allclose(image.affine, reference.affine) or not np.allclose(
            np.asarray(image.dataobj), codes + offset
        ):
            _emit("error", 1.0, f"{sequence}: unexpected content")
            return 2
    _emit("infer", 0.5, "Running the network")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    labels = np.rint(codes).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, reference.affine), output / "segmentation.nii.gz")
    if mode != "noreport":
        voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000
        volumes = {key: float((labels == value).sum()) * voxel_ml
                   for key, value in (("NCR", 1), ("ED", 2), ("ET", 3))}  # fmt: skip
        report = {"volumes_ml": volumes, "regions_ml": {"ET": volumes["ET"] + 1000.0}}
        (output / "report.json").write_text(json.dumps(report))
    _emit("done", 1.0, "Done", outputs={"segmentation": str(output / "segmentation.nii.gz")})
    return 0


if __name__ == "__main__":
    sys.exit(fake_worker(sys.argv[1:]))
