"""3D Slicer module: brain glioma segmentation from T1, T1ce, T2 and FLAIR MRI.

The module is thin on purpose: the widget syncs the panel with a parameter node, the logic
writes the chosen volumes to a temporary folder, runs the segmentation in a ``PythonSlicer``
child process (``python -m BrainTumorSegLib segment ... --progress-json``) and imports the
result as segments and a volume table. Slicer-free helpers live in
``BrainTumorSegLib/slicer_glue.py``. TensorFlow is never imported in Slicer's process.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from BrainTumorSegLib import slicer_glue
from BrainTumorSegLib.load import SEQUENCE_TITLES, SEQUENCES
from BrainTumorSegLib.model import default_model_path

MODULE_DIR = Path(__file__).resolve().parent
SETTINGS_USER_MODELS = "BrainTumorSeg/UserModels"
SETTINGS_SELECTED_MODEL = "BrainTumorSeg/SelectedModel"
VOLUME_TABLE_REFERENCE = "BrainTumorSegVolumes"  # segmentation -> its volume table
SELECTOR_NAMES = {s: f"{s}Selector" for s in SEQUENCES}
logger = logging.getLogger(__name__)


class BrainTumorSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Brain Tumor Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainTumorSeg contributors"]
        self.parent.helpText = (
            "Segments brain gliomas (necrotic core, edema, enhancing tumour) from T1, T1ce, T2 "
            "and FLAIR MRI with a 3D U-Net. The computation runs in a separate process; the "
            "result is a segmentation with three segments and a table of volumes. See "
            '<a href="https://github.com/braintumorseg/BrainTumorSeg">the project page</a>.'
        )
        self.parent.acknowledgementText = (
            "Trained and evaluated on the BraTS challenge data. Not for clinical use."
        )


#
# Parameter node
#


@parameterNodeWrapper
class BrainTumorSegParameterNode:
    """The panel's state; widgets name their field with the SlicerParameterName property."""

    t1: vtkMRMLScalarVolumeNode
    t1ce: vtkMRMLScalarVolumeNode
    t2: vtkMRMLScalarVolumeNode
    flair: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    biasCorrection: Annotated[str, Choice(list(slicer_glue.BIAS_CORRECTION_CHOICES))] = "auto"
    threads: Annotated[int, WithinRange(0, 256)] = 0
    testTimeAugmentation: Annotated[str, Choice(list(slicer_glue.TTA_CHOICES))] = "model"
    rawInput: Annotated[str, Choice(list(slicer_glue.RAW_INPUT_CHOICES))] = "off"
    components: Annotated[str, Choice(list(slicer_glue.COMPONENT_CHOICES))] = "model"
    modelPath: str = ""


#
# Widget
#


class BrainTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: input selectors, model, options, Apply/Cancel, progress and results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: BrainTumorSegLogic | None = None
        self._parameterNode: BrainTumorSegParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._job: SegmentationJob | None = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainTumorSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # New volumes may fill empty selectors; deferred so the node has its final name.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeAdded)

        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.addModelButton.clicked.connect(self.onAddModel)
        self.ui.removeModelButton.clicked.connect(self.onRemoveModel)
        self.ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        self.ui.show3DButton.clicked.connect(self.onShow3D)
        for selectorName in SELECTOR_NAMES.values():
            getattr(self.ui, selectorName).currentNodeChanged.connect(self._updateState)

        self.ui.volumesTable.setColumnCount(4)
        self.ui.volumesTable.setHorizontalHeaderLabels(
            ["Volume", "Sequence", "Size", "Spacing (mm)"]
        )
        self.ui.volumesTable.horizontalHeader().setStretchLastSection(True)
        self.ui.threadsSpinBox.setSpecialValueText("automatic")
        self.ui.progressBar.setVisible(False)

        self._fillModelSelector()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onNodeAdded(self, caller, event) -> None:
        qt.QTimer.singleShot(0, self._autoSelectInputs)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self._autoSelectInputs()

    def setParameterNode(self, parameterNode: BrainTumorSegParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._selectModelPath(self._parameterNode.modelPath)
        self._updateState()

    def _autoSelectInputs(self) -> None:
        if self._parameterNode is None:
            return
        self.logic.autoSelectInputs(self._parameterNode)
        self._updateState()

    def _selectedInputs(self) -> dict[str, Any]:
        return {s: getattr(self.ui, name).currentNode() for s, name in SELECTOR_NAMES.items()}

    def _updateState(self, *_args) -> None:
        """Enable Apply only for a complete, distinct selection; say why otherwise."""
        self._fillVolumesTable()
        if self._job is not None:
            return
        problem = self.logic.inputProblem(self._selectedInputs())
        if problem is None and self._currentModel() is None:
            problem = "Add or select a model."
        self.ui.applyButton.text = "Apply"
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or "Segment the tumour in the selected volumes."

    def _fillVolumesTable(self) -> None:
        volumes = self.logic.sceneVolumes()
        table = self.ui.volumesTable
        table.setRowCount(len(volumes))
        for row, node in enumerate(volumes):
            sequence = slicer_glue.sequence_of_volume(node.GetName())
            dims = node.GetImageData().GetDimensions() if node.GetImageData() else (0, 0, 0)
            cells = [
                node.GetName(),
                SEQUENCE_TITLES.get(sequence, "?") if sequence else "?",
                "x".join(str(d) for d in dims),
                " x ".join(f"{s:.2f}" for s in node.GetSpacing()),
            ]
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                table.setItem(row, column, item)

    # --- Models

    def _fillModelSelector(self) -> None:
        selector = self.ui.modelSelector
        wasBlocked = selector.blockSignals(True)
        selector.clear()
        for model in self.logic.availableModels():
            selector.addItem(model.label, model.path)
            selector.setItemData(selector.count - 1, model.path, qt.Qt.ToolTipRole)
        selector.blockSignals(wasBlocked)
        self._selectModelPath(qt.QSettings().value(SETTINGS_SELECTED_MODEL, ""))

    def _selectModelPath(self, path: str) -> None:
        index = self.ui.modelSelector.findData(path) if path else -1
        self.ui.modelSelector.currentIndex = max(index, 0) if self.ui.modelSelector.count else -1
        self.onModelChanged()

    def _currentModel(self) -> slicer_glue.ModelChoice | None:
        path = self.ui.modelSelector.currentData
        return next((m for m in self.logic.availableModels() if m.path == path), None)

    def onModelChanged(self, *_args) -> None:
        model = self._currentModel()
        self.ui.removeModelButton.enabled = model is not None and not model.bundled
        self.ui.modelInfoLabel.text = model.path if model else "No model: add one."
        if model is not None:
            qt.QSettings().setValue(SETTINGS_SELECTED_MODEL, model.path)
            if self._parameterNode:
                self._parameterNode.modelPath = model.path
        self._updateState()

    def onAddModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(),
            "Add a segmentation model",
            "",
            "Model (model.json *.keras *.h5);;All files (*)",
        )
        if not path:
            return
        channels = None
        if (
            path.lower().endswith(slicer_glue.KERAS_SUFFIXES)
            and not Path(path).with_name("model.json").is_file()
        ):
            text = qt.QInputDialog.getText(
                slicer.util.mainWindow(),
                "Channel order",
                "Input channels of this model, in order (names from t1, t1ce, t2, flair):",
                qt.QLineEdit.Normal,
                "t1,t1ce,t2,flair",
            )
            if not text:
                return
            channels = text.split(",")
        with slicer.util.tryWithErrorDisplay("Cannot add this model.", waitCursor=True):
            model = self.logic.addUserModel(path, channels)
            self._fillModelSelector()
            self._selectModelPath(model.path)

    def onRemoveModel(self) -> None:
        model = self._currentModel()
        if model is not None and not model.bundled:
            self.logic.removeUserModel(model.path)
            self._fillModelSelector()

    # --- Run

    def onApplyButton(self) -> None:
        if self._job is not None:
            self.ui.statusLabel.text = "Cancelling..."
            self._job.cancel()
            return
        model = self._currentModel()
        if not self._ensureDependencies(model):
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting..."
        with slicer.util.tryWithErrorDisplay("Failed to start the segmentation.", waitCursor=True):
            self._job = self.logic.start(
                self._selectedInputs(),
                self.ui.outputSegmentationSelector.currentNode(),
                model=model,
                biasCorrection=self._parameterNode.biasCorrection,
                threads=self._parameterNode.threads,
                testTimeAugmentation=self._parameterNode.testTimeAugmentation,
                rawInput=self._parameterNode.rawInput,
                components=self._parameterNode.components,
                onProgress=self._onProgress,
                onFinished=self._onFinished,
            )
        if self._job is None:
            self.ui.progressBar.setVisible(False)
            return
        self.ui.applyButton.text = "Cancel"
        self.ui.applyButton.toolTip = "Stop the segmentation; the scene is left unchanged."

    def _ensureDependencies(self, model: slicer_glue.ModelChoice | None) -> bool:
        missing = self.logic.missingDependencies(model)
        if not missing:
            return True
        packages = "\n".join(f"  - {r.pip_name} ({r.purpose})" for r in missing)
        if not slicer.util.confirmOkCancelDisplay(
            "The segmentation needs these Python packages in Slicer's Python environment:\n"
            f"{packages}\n\nInstall them now? This may take a few minutes; packages that "
            "Slicer bundles (numpy, scipy, SimpleITK) are not changed.",
            "Install dependencies",
        ):
            self.ui.statusLabel.text = "Dependencies not installed; nothing was run."
            return False
        self.ui.statusLabel.text = "Installing dependencies..."
        slicer.app.processEvents()
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self.logic.installDependencies(missing)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as error:
            self.ui.statusLabel.text = "Installing dependencies failed."
            slicer.util.errorDisplay(
                f"Installing {', '.join(r.pip_name for r in missing)} failed: {error}\n"
                "See the Python console for pip's output.",
                "Install dependencies",
            )
            return False
        finally:
            qt.QApplication.restoreOverrideCursor()
        return True

    def _onProgress(self, fraction: float | None, message: str, isLog: bool) -> None:
        if isLog:
            self.ui.logTextEdit.appendPlainText(message)
            return
        if fraction is not None:
            self.ui.progressBar.value = round(fraction * 100)
        if message:
            self.ui.statusLabel.text = message
            self.ui.logTextEdit.appendPlainText(message)

    def _onFinished(self, outcome: JobOutcome) -> None:
        self._job = None
        self.ui.progressBar.setVisible(False)
        if outcome.status == "succeeded":
            self.ui.outputSegmentationSelector.setCurrentNode(outcome.segmentation)
            done = f"Done in {outcome.seconds:.0f} s."
            for warning in outcome.warnings:
                self.ui.logTextEdit.appendPlainText(f"Warning: {warning}")
            if outcome.warnings:
                done += f" {len(outcome.warnings)} warning(s): see the log below."
            self.ui.statusLabel.text = done
        elif outcome.status == "cancelled":
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
        else:
            self.ui.statusLabel.text = f"Failed: {outcome.message}"
            self.ui.logTextEdit.appendPlainText(f"Error: {outcome.message}")
        self._updateState()

    def onShow3D(self) -> None:
        segmentation = self.ui.outputSegmentationSelector.currentNode()
        if segmentation is None:
            self.ui.statusLabel.text = "No segmentation to show: run Apply first."
            return
        self.logic.show3D(segmentation)


#
# Logic
#


@dataclass
class JobOutcome:
    """How a run ended: "succeeded", "failed" or "cancelled"."""

    status: str
    message: str = ""
    segmentation: Any = None
    table: Any = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


class SegmentationJob:
    """One run of the worker: temporary files, child process, result import.

    ``poll`` (called by a Qt timer in the GUI, or by ``wait`` in scripts) forwards progress and
    finishes the job once the process has ended. Temporary files are removed in every outcome.
    """

    TIMER_INTERVAL_MS = 200

    def __init__(
        self,
        logic: BrainTumorSegLogic,
        inputs: dict[str, Any],
        outputSegmentation: Any,
        command: list[str],
        env: dict[str, str],
        tempDir: Path,
        onProgress: Callable[[float | None, str, bool], None] | None,
        onFinished: Callable[[JobOutcome], None] | None,
        useTimer: bool,
    ) -> None:
        import time

        self.logic = logic
        self.inputs = inputs
        self.outputSegmentation = outputSegmentation
        self.tempDir = tempDir
        self.outputDir = tempDir / "output"
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.outcome: JobOutcome | None = None
        self._started = time.monotonic()
        self.worker = slicer_glue.WorkerProcess(command, env=env, cwd=tempDir)
        self.timer = None
        if useTimer:
            self.timer = qt.QTimer()
            self.timer.setInterval(self.TIMER_INTERVAL_MS)
            self.timer.timeout.connect(self.poll)
            self.timer.start()

    @property
    def running(self) -> bool:
        return self.outcome is None

    def poll(self) -> None:
        """Forward new progress; finish once the worker has exited and its output is read."""
        if self.outcome is not None:
            return
        for event in self.worker.poll():
            if event.stage == "log":
                logger.info(f"BrainTumorSeg worker: {event.message}")
            if self.onProgress is not None:
                self.onProgress(event.fraction, event.message, event.stage == "log")
        if self.worker.finished:
            self._finish()

    def wait(self) -> JobOutcome:
        """Block until the job ends (for scripts and tests); keeps Slicer's GUI painted."""
        import time

        while self.outcome is None:
            self.poll()
            if self.outcome is None:
                slicer.app.processEvents()
                time.sleep(0.05)
        return self.outcome

    def cancel(self) -> None:
        """Kill the worker's process tree; the scene is left as it was."""
        if self.outcome is not None:
            return
        self.worker.cancel()
        self._finish()

    def _finish(self) -> None:
        import time

        if self.timer is not None:
            self.timer.stop()
        try:
            if self.worker.cancelled:
                outcome = JobOutcome("cancelled", "Cancelled by the user.")
            elif not self.worker.succeeded:
                outcome = JobOutcome("failed", self.worker.failure())
            else:
                try:
                    segmentation, table = self.logic.importResult(
                        self.outputDir, self.worker.done, self.inputs, self.outputSegmentation
                    )
                    warnings = slicer_glue.report_warnings(slicer_glue.read_report(self.outputDir))
                    for warning in warnings:
                        logger.warning(f"BrainTumorSeg: {warning}")
                    outcome = JobOutcome("succeeded", "", segmentation, table, warnings=warnings)
                except Exception as error:
                    logger.exception("BrainTumorSeg: importing the result failed")
                    outcome = JobOutcome("failed", f"Could not import the result: {error}")
        finally:
            shutil.rmtree(self.tempDir, ignore_errors=True)
        outcome.seconds = time.monotonic() - self._started
        self.outcome = outcome
        if self.onFinished is not None:
            self.onFinished(outcome)


class BrainTumorSegLogic(ScriptedLoadableModuleLogic):
    """All the work, usable without the panel (scripts, batches, tests).

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("BrainTumorSeg")
        inputs = logic.guessInputs()          # {"t1": node, "t1ce": node, ...} from node names
        segmentation = logic.run(inputs)      # blocks until done; raises RuntimeError on failure
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # Interpreter + module that run the worker; tests point it at a fake worker script.
        self.workerCommandBase: list[str] | None = None
        self.modelsDir = MODULE_DIR / "Resources" / "Models"

    def getParameterNode(self) -> BrainTumorSegParameterNode:
        return BrainTumorSegParameterNode(super().getParameterNode())

    # --- Inputs

    def sceneVolumes(self) -> list[Any]:
        """Scalar volumes in the scene, label maps excluded, in scene order."""
        nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        return [n for n in nodes if not n.IsA("vtkMRMLLabelMapVolumeNode")]

    def guessInputs(self) -> dict[str, Any]:
        """Volumes of the scene matched to sequences by their names."""
        volumes = self.sceneVolumes()
        found = slicer_glue.guess_inputs([v.GetName() for v in volumes])
        return {sequence: volumes[index] for sequence, index in found.items()}

    def autoSelectInputs(self, parameterNode: BrainTumorSegParameterNode) -> None:
        """Fill the empty input fields from volume names; the user's choices are kept."""
        taken = {getattr(parameterNode, s).GetID() for s in SEQUENCES if getattr(parameterNode, s)}
        for sequence, node in self.guessInputs().items():
            if getattr(parameterNode, sequence) is None and node.GetID() not in taken:
                setattr(parameterNode, sequence, node)
                taken.add(node.GetID())

    @staticmethod
    def inputProblem(inputs: dict[str, Any]) -> str | None:
        """Why these inputs cannot be segmented (missing or used twice), or None."""
        ids = {s: (n.GetID() if n is not None else None) for s, n in inputs.items()}
        names = {n.GetID(): n.GetName() for n in inputs.values() if n is not None}
        return slicer_glue.selection_problem(ids, names)

    # --- Models

    def availableModels(self) -> list[slicer_glue.ModelChoice]:
        """Bundled models first, then the ones the user added."""
        bundled = slicer_glue.bundled_model_choices(self.modelsDir)
        default = default_model_path()
        # The core's default model goes first so that Apply uses it unless told otherwise.
        bundled.sort(key=lambda m: default is None or Path(m.path) != Path(default))
        return bundled + self.userModels()

    def userModels(self) -> list[slicer_glue.ModelChoice]:
        return slicer_glue.decode_user_models(qt.QSettings().value(SETTINGS_USER_MODELS, ""))

    def addUserModel(self, path: str, channels: list[str] | None = None) -> slicer_glue.ModelChoice:
        """Remember a model folder or Keras file across sessions (raises ValueError if bad)."""
        model = slicer_glue.model_from_user_path(path, channels)
        models = [m for m in self.userModels() if m.path != model.path] + [model]
        qt.QSettings().setValue(SETTINGS_USER_MODELS, slicer_glue.encode_user_models(models))
        return model

    def removeUserModel(self, path: str) -> None:
        models = [m for m in self.userModels() if m.path != path]
        qt.QSettings().setValue(SETTINGS_USER_MODELS, slicer_glue.encode_user_models(models))

    def defaultModel(self) -> slicer_glue.ModelChoice | None:
        models = self.availableModels()
        return models[0] if models else None

    # --- Dependencies

    def missingDependencies(
        self, model: slicer_glue.ModelChoice | None = None
    ) -> list[slicer_glue.Requirement]:
        """Packages the worker needs that Slicer's Python does not have (nothing imported)."""
        keras = bool(model and model.needs_tensorflow)
        return slicer_glue.missing_requirements(slicer_glue.is_importable, keras_model=keras)

    def installDependencies(self, missing: list[slicer_glue.Requirement]) -> None:
        """pip-install ``missing`` into Slicer's Python without downgrading bundled packages."""
        from importlib import metadata

        installed = {}
        for name in slicer_glue.BUNDLED_PACKAGES:
            try:
                installed[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        with tempfile.TemporaryDirectory() as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text(
                slicer_glue.constraints_text(installed, slicer_glue.BUNDLED_PACKAGES)
            )
            for arguments in slicer_glue.pip_install_arguments(missing, constraints):
                logger.info(f"BrainTumorSeg: pip install {arguments}")
                slicer.util.pip_install(arguments)
        still = self.missingDependencies()
        wanted = {r.pip_name for r in missing}
        failed = [r.pip_name for r in still if r.pip_name in wanted]
        if failed:
            raise RuntimeError(f"{', '.join(failed)} still cannot be imported after installing")

    # --- Running

    def _commandBase(self) -> list[str]:
        if self.workerCommandBase is not None:
            return list(self.workerCommandBase)
        python = shutil.which("PythonSlicer") or shutil.which("PythonSlicer.exe")
        if not python:
            raise RuntimeError("PythonSlicer was not found on the PATH of this Slicer.")
        return [python, "-m", slicer_glue.WORKER_MODULE]

    def start(
        self,
        inputs: dict[str, Any],
        outputSegmentation: Any = None,
        *,
        model: slicer_glue.ModelChoice | None = None,
        biasCorrection: str = "auto",
        threads: int = 0,
        testTimeAugmentation: str = "model",
        rawInput: str = "off",
        components: str = "model",
        reference: str = "t1ce",
        onProgress: Callable[[float | None, str, bool], None] | None = None,
        onFinished: Callable[[JobOutcome], None] | None = None,
        useTimer: bool = True,
    ) -> SegmentationJob:
        """Export the inputs and launch the worker; returns at once with the running job.

        ``outputSegmentation`` None creates a new segmentation node on success. ``model``
        None uses the first bundled model. Raises ValueError for an invalid selection.
        """
        problem = self.inputProblem(inputs)
        if problem:
            raise ValueError(problem)
        model = model or self.defaultModel()
        tempDir = Path(tempfile.mkdtemp(prefix="BrainTumorSeg-", dir=slicer.app.temporaryPath))
        try:
            files = self.exportInputs(inputs, tempDir / "inputs")
            command = slicer_glue.worker_command(
                self._commandBase(),
                files,
                tempDir / "output",
                model=model,
                bias_correction=biasCorrection,
                tta=testTimeAugmentation,
                threads=threads,
                reference=reference,
                raw=rawInput,
                components=components,
            )
            env = slicer_glue.worker_environment(os.environ, slicer_glue.library_parent())
            logger.info(f"BrainTumorSeg: running {' '.join(command)}")
            return SegmentationJob(
                self, dict(inputs), outputSegmentation, command, env, tempDir,
                onProgress, onFinished, useTimer,
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise

    def run(self, inputs: dict[str, Any], outputSegmentation: Any = None, **options) -> Any:
        """Segment and wait; returns the segmentation node or raises RuntimeError."""
        job = self.start(inputs, outputSegmentation, useTimer=False, **options)
        outcome = job.wait()
        if outcome.status != "succeeded":
            raise RuntimeError(outcome.message)
        return outcome.segmentation

    def exportInputs(self, inputs: dict[str, Any], folder: Path) -> dict[str, Path]:
        """Write each input volume to ``folder`` without touching its storage node.

        Volumes are exported in world coordinates so that inputs under different transforms
        reach the worker aligned as the user sees them.
        """
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for sequence in SEQUENCES:
            path = folder / f"{sequence}{slicer_glue.INPUT_FILE_SUFFIX}"
            if not slicer.util.exportNode(inputs[sequence], str(path), world=True):
                raise RuntimeError(f"Could not write the {SEQUENCE_TITLES[sequence]} volume.")
            files[sequence] = path
        return files

    # --- Result

    def importResult(
        self,
        outputDir: Path,
        done: slicer_glue.ProgressEvent | None,
        inputs: dict[str, Any],
        outputSegmentation: Any = None,
        reference: str = "t1ce",
    ) -> tuple[Any, Any]:
        """Turn the worker's label map into segments and a volume table.

        The scene is only changed once the label map has been read; a node created here is
        removed again if anything fails.
        """
        path = slicer_glue.result_segmentation_path(outputDir, done)
        if not path.is_file():
            raise RuntimeError(f"the worker wrote no {path.name}")
        labelmap = slicer.util.loadLabelVolume(str(path), {"show": False})
        if not labelmap:
            raise RuntimeError(f"cannot read {path.name}")
        created = []
        try:
            labels = slicer.util.arrayFromVolume(labelmap)
            referenceVolume = inputs[reference]
            segmentation = outputSegmentation
            if segmentation is None:
                name = slicer.mrmlScene.GenerateUniqueName(f"{referenceVolume.GetName()} tumour")
                segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
                created.append(segmentation)
            segmentation.CreateDefaultDisplayNodes()
            # With a transformed reference the result comes back in world space.
            geometrySource = (
                labelmap if referenceVolume.GetParentTransformNode() else referenceVolume
            )
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(geometrySource)
            self._fillSegments(segmentation, labels, labelmap)
            segmentation.CreateClosedSurfaceRepresentation()

            counts = dict(zip(*np.unique(labels, return_counts=True)))
            voxelMl = float(np.prod(labelmap.GetSpacing())) / 1000.0
            rows = slicer_glue.volume_rows(
                slicer_glue.read_report(outputDir), {int(k): int(v) for k, v in counts.items()},
                voxelMl,
            )  # fmt: skip
            table = segmentation.GetNodeReference(VOLUME_TABLE_REFERENCE)
            if table is None:
                table = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLTableNode", f"{segmentation.GetName()} volumes"
                )
                created.append(table)
                segmentation.SetNodeReferenceID(VOLUME_TABLE_REFERENCE, table.GetID())
            self._fillVolumeTable(table, rows)
            self._placeBeside(referenceVolume, created)
        except BaseException:
            for node in created:
                slicer.mrmlScene.RemoveNode(node)
            raise
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)
        return segmentation, table

    @staticmethod
    def _fillSegments(segmentation: Any, labels: np.ndarray, labelmap: Any) -> None:
        """One segment per tumour label; earlier segments of the same names are replaced."""
        content = segmentation.GetSegmentation()
        for spec in slicer_glue.segment_specs():
            for stale in (spec.segment_id, content.GetSegmentIdBySegmentName(spec.name)):
                if stale and content.GetSegment(stale) is not None:
                    content.RemoveSegment(stale)
            segmentId = content.AddEmptySegment(spec.segment_id, spec.name, spec.color)
            segment = content.GetSegment(segmentId)
            segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
            mask = (labels == spec.label_value).astype(np.uint8)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                mask, segmentation, segmentId, labelmap
            )

    @staticmethod
    def _fillVolumeTable(table: Any, rows: list[slicer_glue.VolumeRow]) -> None:
        names = vtk.vtkStringArray()
        names.SetName("Segment")
        keys = vtk.vtkStringArray()
        keys.SetName("Key")
        volumes = vtk.vtkDoubleArray()
        volumes.SetName("Volume [mL]")
        for row in rows:
            names.InsertNextValue(row.name)
            keys.InsertNextValue(row.key)
            volumes.InsertNextValue(round(row.volume_ml, 3))
        vtkTable = table.GetTable()
        vtkTable.RemoveAllColumns()
        for column in (names, keys, volumes):
            vtkTable.AddColumn(column)
        table.Modified()

    @staticmethod
    def _placeBeside(referenceVolume: Any, nodes: list[Any]) -> None:
        """Put new nodes in the subject hierarchy folder/study of the reference input."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        parent = shNode.GetItemParent(shNode.GetItemByDataNode(referenceVolume))
        for node in nodes:
            shNode.SetItemParent(shNode.GetItemByDataNode(node), parent)

    def show3D(self, segmentation: Any) -> None:
        """Show the segmentation's surfaces in the 3D view and centre the view on them."""
        segmentation.CreateClosedSurfaceRepresentation()
        segmentation.GetDisplayNode().SetVisibility3D(True)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()


#
# Self-test (runs inside Slicer: Reload and Test, or ctest)
#


class BrainTumorSegTest(ScriptedLoadableModuleTest):
    """End-to-end test with the bundled model on a small synthetic four-volume case."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_guess_inputs()
        self.setUp()
        self.test_segment_synthetic_case()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()

    def _makeCase(self, names: dict[str, str] | None = None) -> dict[str, Any]:
        """The synthetic case of ``slicer_glue.self_test_case`` as scene volumes."""
        names = names or {s: f"Case001_{s}" for s in SEQUENCES}
        case = slicer_glue.self_test_case()
        ijkToRas = vtk.vtkMatrix4x4()
        for row in range(4):
            for column in range(4):
                ijkToRas.SetElement(row, column, float(case.ijk_to_ras[row, column]))
        return {
            sequence: slicer.util.addVolumeFromArray(
                case.images[sequence], ijkToRAS=ijkToRas, name=names[sequence]
            )
            for sequence in SEQUENCES
        }

    def test_guess_inputs(self) -> None:
        self.delayDisplay("Matching volume names to sequences")
        names = {"t1": "BraTS-GLI-00001-000-t1n", "t1ce": "BraTS-GLI-00001-000-t1c",
                 "t2": "BraTS-GLI-00001-000-t2w", "flair": "BraTS-GLI-00001-000-t2f"}  # fmt: skip
        volumes = self._makeCase(names)
        guessed = BrainTumorSegLogic().guessInputs()
        self.assertEqual({s: n.GetID() for s, n in guessed.items()},
                         {s: n.GetID() for s, n in volumes.items()})  # fmt: skip

    def test_segment_synthetic_case(self) -> None:
        logic = BrainTumorSegLogic()
        if logic.defaultModel() is None:
            self.fail(f"No bundled model in {logic.modelsDir}; the extension ships one.")
        self.delayDisplay("Installing missing dependencies (first run only)")
        missing = logic.missingDependencies()
        if missing:
            logic.installDependencies(missing)
        volumes = self._makeCase()
        self.delayDisplay("Segmenting a synthetic case with the bundled model")
        segmentation = logic.run(volumes, threads=2)

        content = segmentation.GetSegmentation()
        specs = slicer_glue.segment_specs()
        self.assertEqual(content.GetNumberOfSegments(), len(specs))
        for spec in specs:
            segment = content.GetSegment(spec.segment_id)
            self.assertIsNotNone(segment)
            self.assertEqual(segment.GetName(), spec.name)
            self.assertEqual(segment.GetTag(segment.GetTerminologyEntryTagName()), spec.terminology)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(
                segmentation, spec.segment_id, volumes["t1ce"]
            )
            self.assertEqual(mask.shape, slicer.util.arrayFromVolume(volumes["t1ce"]).shape)

        expected = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "expected")
        expected.SetReferenceImageGeometryParameterFromVolumeNode(volumes["t1ce"])
        geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        self.assertEqual(
            content.GetConversionParameter(geometryName),
            expected.GetSegmentation().GetConversionParameter(geometryName),
        )
        slicer.mrmlScene.RemoveNode(expected)

        table = segmentation.GetNodeReference(VOLUME_TABLE_REFERENCE)
        self.assertIsNotNone(table)
        self.assertEqual(table.GetNumberOfRows(), 6)
        volumesColumn = table.GetTable().GetColumnByName("Volume [mL]")
        perLabel = [volumesColumn.GetValue(r) for r in range(3)]
        wholeTumour = volumesColumn.GetValue(5)
        self.assertAlmostEqual(sum(perLabel), wholeTumour, delta=0.01)
        self.assertIsNone(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode"))
        self.delayDisplay("Segmentation test passed")

    def test_cancel_leaves_scene_unchanged(self) -> None:
        logic = BrainTumorSegLogic()
        if logic.defaultModel() is None or logic.missingDependencies():
            self.fail("the bundled model and the dependencies are needed (see previous test)")
        volumes = self._makeCase()
        before = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.start(volumes, useTimer=False)
        job.cancel()
        self.assertEqual(job.outcome.status, "cancelled")
        self.assertFalse(job.tempDir.exists())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Cancel test passed")
