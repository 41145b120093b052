"""Slicer-free helpers of the 3D Slicer module.

The module (``BrainTumorSeg.py``) keeps only GUI and scene code; everything that can be
written as plain Python lives here so it is testable without Slicer: matching volume names to
sequences, validating the panel's selection, building the worker's command line and
environment, parsing its progress lines, running it as a cancellable child process, the
segment and volume-table definitions, model choices, the dependency check and the self-test's
synthetic case.

This file must never import ``slicer``, ``qt``, ``vtk``, TensorFlow or anything the Slicer
Python may not have yet (nibabel, onnxruntime): it is imported when Slicer loads the module.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .labels import CONVENTIONS, LABEL_BY_KEY, LABELS, REGION_NAMES, REGIONS, terminology_entry
from .load import SEQUENCE_TITLES, SEQUENCES, match_sequence
from .report import report_warnings  # noqa: F401 - the module reads the worker's warnings

# The worker writes labels in this convention so that label value == class index (1..3),
# which lets the module turn label values into segments without a lookup.
WORKER_LABEL_CONVENTION = "brats2023"
WORKER_MODULE = "BrainTumorSegLib"
INPUT_FILE_SUFFIX = ".nii.gz"
SEGMENTATION_FILE = "segmentation.nii.gz"
REPORT_FILE = "report.json"
BIAS_CORRECTION_CHOICES: tuple[str, ...] = ("auto", "on", "off")
# Raw scanner series: register, resample to 1 mm and skull-strip first (worker ``--raw``).
RAW_INPUT_CHOICES: tuple[str, ...] = ("off", "auto", "on")
# Component postprocessing: the model's own setting, only the largest tumour, or every focus.
COMPONENT_CHOICES: tuple[str, ...] = ("model", "largest", "all")
# Mirroring test-time augmentation: the model's own setting, always, never.
TTA_CHOICES: tuple[str, ...] = ("model", "on", "off")
KERAS_SUFFIXES: tuple[str, ...] = (".keras", ".h5")


# --- Sequences ---------------------------------------------------------------------------


def sequence_of_volume(name: str) -> str | None:
    """The sequence a volume node name refers to (same rules as the CLI's folder scan)."""
    return match_sequence(name)


def guess_inputs(names: Sequence[str]) -> dict[str, int]:
    """Pick, for each sequence, the index of the first volume whose name matches it.

    ``names`` are the scene's volume names in scene order; sequences without a matching name
    are left out, so the panel leaves those selectors for the user.
    """
    chosen: dict[str, int] = {}
    for index, name in enumerate(names):
        sequence = sequence_of_volume(name)
        if sequence and sequence not in chosen:
            chosen[sequence] = index
    return chosen


def selection_problem(
    selection: Mapping[str, str | None], names: Mapping[str, str] | None = None
) -> str | None:
    """Why the chosen inputs cannot be segmented, or None when they can.

    ``selection`` maps each sequence to a volume identifier (None when not chosen); ``names``
    maps identifiers to names shown in the message.
    """
    names = names or {}
    missing = [SEQUENCE_TITLES[s] for s in SEQUENCES if not selection.get(s)]
    if missing:
        return f"Select the {', '.join(missing)} volume{'s' if len(missing) > 1 else ''}."
    used: dict[str, list[str]] = {}
    for sequence in SEQUENCES:
        used.setdefault(str(selection[sequence]), []).append(SEQUENCE_TITLES[sequence])
    for identifier, titles in used.items():
        if len(titles) > 1:
            shown = names.get(identifier, identifier)
            return f"Volume '{shown}' is selected as both {' and '.join(titles)}."
    return None


def parse_channels(text: str) -> list[str]:
    """Parse a model's channel order (e.g. ``"flair, t1ce, t2"``), raising ValueError if bad."""
    channels = [c.strip().lower() for c in text.replace(";", ",").split(",") if c.strip()]
    unknown = [c for c in channels if c not in SEQUENCES]
    if not channels or unknown or len(set(channels)) != len(channels):
        raise ValueError(
            f"channel order {text!r} must be distinct names from {', '.join(SEQUENCES)}"
        )
    return channels


# --- Models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """A model the user can pick: a package folder (model.json) or a Keras file."""

    path: str
    label: str
    channels: tuple[str, ...] | None = None  # only for bare Keras files without model.json
    bundled: bool = False

    @property
    def needs_tensorflow(self) -> bool:
        """Keras models run with TensorFlow (in the worker process only)."""
        return self.path.lower().endswith(KERAS_SUFFIXES)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form stored in the application settings."""
        return {"path": self.path, "label": self.label, "channels": list(self.channels or [])}


def model_from_package(folder: str | Path, *, bundled: bool = False) -> ModelChoice:
    """Describe a model package folder by its model.json (name and version)."""
    folder = Path(folder)
    meta_path = folder / "model.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{meta_path} is not a readable model description ({error})") from None
    label = f"{meta.get('name', folder.name)} {meta.get('version', '')}".strip()
    return ModelChoice(path=str(folder), label=label, bundled=bundled)


def model_from_user_path(path: str | Path, channels: Sequence[str] | None = None) -> ModelChoice:
    """Validate a model the user picked: a folder / model.json, a .keras or a .h5 file.

    A ``.h5`` file (seed-style Keras weights) carries no metadata, so its channel order must
    be given; a ``.keras`` file may have one given too.
    """
    path = Path(path)
    if path.name == "model.json":
        path = path.parent
    if path.is_dir():
        return model_from_package(path)
    if not path.is_file():
        raise ValueError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in KERAS_SUFFIXES:
        raise ValueError(f"{path.name}: choose a model folder (model.json), a .keras or a .h5 file")
    if suffix == ".h5" and not channels:
        raise ValueError(f"{path.name}: a .h5 model needs its channel order (e.g. flair,t1ce,t2)")
    order = tuple(parse_channels(",".join(channels))) if channels else None
    suffix_note = f" [{','.join(order)}]" if order else ""
    return ModelChoice(path=str(path), label=f"{path.name}{suffix_note}", channels=order)


def bundled_model_choices(models_dir: str | Path) -> list[ModelChoice]:
    """Every model package shipped in ``models_dir`` (folders holding a model.json)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    choices = []
    for meta in sorted(models_dir.glob("*/model.json")):
        try:
            choices.append(model_from_package(meta.parent, bundled=True))
        except ValueError:
            continue  # a broken bundled package must not hide the others
    return choices


def encode_user_models(models: Iterable[ModelChoice]) -> str:
    """Serialise user-added models for the application settings."""
    return json.dumps([m.to_dict() for m in models if not m.bundled])


def decode_user_models(text: str | None) -> list[ModelChoice]:
    """Read user-added models back from the settings, dropping entries that vanished."""
    try:
        entries = json.loads(text) if text else []
    except ValueError:
        return []
    models = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            models.append(model_from_user_path(entry["path"], entry.get("channels") or None))
        except (KeyError, TypeError, ValueError):
            continue
    return models


# --- Worker command line and environment ----------------------------------------------------


def worker_command(
    command_base: Sequence[str],
    inputs: Mapping[str, str | Path],
    output_dir: str | Path,
    *,
    model: ModelChoice | None = None,
    bias_correction: str = "auto",
    tta: str = "model",
    threads: int = 0,
    reference: str = "t1ce",
    raw: str = "off",
    components: str = "model",
) -> list[str]:
    """Command line of the segmentation worker.

    ``command_base`` is the interpreter and module, e.g. ``[PythonSlicer, "-m",
    "BrainTumorSegLib"]``. ``threads`` 0 lets the worker choose.
    """
    if bias_correction not in BIAS_CORRECTION_CHOICES:
        raise ValueError(f"bias_correction must be one of {BIAS_CORRECTION_CHOICES}")
    missing = [s for s in SEQUENCES if s not in inputs]
    if missing:
        raise ValueError(f"missing inputs: {', '.join(missing)}")
    if reference not in SEQUENCES:
        raise ValueError(f"reference must be one of {SEQUENCES}")
    if raw not in RAW_INPUT_CHOICES:
        raise ValueError(f"raw must be one of {RAW_INPUT_CHOICES}")
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES}")
    if components not in COMPONENT_CHOICES:
        raise ValueError(f"components must be one of {COMPONENT_CHOICES}")
    command = [*command_base, "segment"]
    for sequence in SEQUENCES:
        command += [f"--{sequence}", str(inputs[sequence])]
    command += [
        "--output", str(output_dir),
        "--reference", reference,
        "--labels", WORKER_LABEL_CONVENTION,
        "--bias-correction", bias_correction,
        "--no-overlay",  # the module shows the result in the viewers
        "--progress-json",
    ]  # fmt: skip
    if model is not None:
        command += ["--model", model.path]
        if model.channels:
            command += ["--channels", ",".join(model.channels)]
    if tta != "model":
        command.append("--tta" if tta == "on" else "--no-tta")
    if raw != "off":
        command += ["--raw", raw]
    if components != "model":
        command += ["--components", components]
    if threads > 0:
        command += ["--threads", str(int(threads))]
    return command


def worker_environment(base: Mapping[str, str], library_parent: str | Path) -> dict[str, str]:
    """Environment for the worker: BrainTumorSegLib importable, output not buffered."""
    env = dict(base)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(library_parent), *([existing] if existing else [])])
    # Progress lines must reach the GUI as they are printed, not when a buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- Progress lines --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent:
    """One line of worker output: a progress report, or a plain log line (stage "log")."""

    stage: str
    message: str
    fraction: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_error(self) -> bool:
        return self.stage == "error"

    @property
    def is_done(self) -> bool:
        return self.stage == "done"


def parse_progress_line(line: str) -> ProgressEvent:
    """Interpret one line of worker output.

    JSON objects with a ``stage`` are progress reports (``fraction`` clamped to 0..1);
    anything else (warnings, stray prints, a traceback) is kept as a log line.
    """
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("stage"), str):
            fraction = data.get("fraction")
            try:
                fraction = min(1.0, max(0.0, float(fraction))) if fraction is not None else None
            except (TypeError, ValueError):
                fraction = None
            outputs = data.get("outputs")
            return ProgressEvent(
                stage=data["stage"],
                message=str(data.get("message", "")),
                fraction=fraction,
                outputs=outputs if isinstance(outputs, dict) else {},
            )
    return ProgressEvent(stage="log", message=text)


def failure_message(
    returncode: int | None, error: ProgressEvent | None, log_lines: Sequence[str]
) -> str:
    """One readable sentence for a failed run (no traceback dump)."""
    if error is not None and error.message:
        return error.message
    detail = next((line.strip() for line in reversed(log_lines) if line.strip()), "")
    if detail.startswith("error:"):
        detail = detail[len("error:") :].strip()
    code = f" (exit code {returncode})" if returncode not in (None, 0) else ""
    return f"The segmentation worker failed{code}" + (f": {detail}" if detail else ".")


# --- Running the worker -----------------------------------------------------------------------


class WorkerProcess:
    """The worker as a child process whose output is read by a thread into a queue.

    The GUI drains the queue from a timer (``poll``) so it never blocks on the pipe; scripts
    call ``wait``. ``cancel`` kills the whole process tree: ``PythonSlicer`` is a launcher
    that starts the real interpreter as its own child, so killing only the launcher would
    leave the computation running.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (
                subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
            )
        else:
            kwargs["start_new_session"] = True  # own process group, killed as a whole
        self.command = list(command)
        self._events: queue.Queue[ProgressEvent | None] = queue.Queue()
        self.log_lines: list[str] = []
        self.error: ProgressEvent | None = None
        self.done: ProgressEvent | None = None
        self.cancelled = False
        self._reader_finished = False
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # tracebacks of a crash end up in the log
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        self._reader = threading.Thread(target=self._read, name="BrainTumorSegWorker", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._events.put(parse_progress_line(line))
        self.process.stdout.close()
        self._events.put(None)  # end of output

    def poll(self) -> list[ProgressEvent]:
        """Events received since the last call; never blocks."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if event is None:
                self._reader_finished = True
                continue
            self._record(event)
            events.append(event)
        return events

    def _record(self, event: ProgressEvent) -> None:
        if event.stage == "log":
            self.log_lines.append(event.message)
            del self.log_lines[:-200]  # keep the tail: enough to explain a crash
        elif event.is_error:
            self.error = event
        elif event.is_done:
            self.done = event

    @property
    def finished(self) -> bool:
        """True once the process has exited and all its output was read."""
        return self._reader_finished and self.process.poll() is not None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def succeeded(self) -> bool:
        return self.finished and not self.cancelled and self.returncode == 0 and self.error is None

    def wait(
        self, on_event: Callable[[ProgressEvent], None] | None = None, interval: float = 0.05
    ) -> int:
        """Block until the worker ends, passing each event to ``on_event``; the exit code."""
        while not self.finished:
            for event in self.poll():
                if on_event:
                    on_event(event)
            time.sleep(interval)
        for event in self.poll():
            if on_event:
                on_event(event)
        return self.process.returncode

    def failure(self) -> str:
        """Readable reason of a failed run."""
        return failure_message(self.returncode, self.error, self.log_lines)

    def cancel(self, grace_seconds: float = 3.0) -> None:
        """Stop the worker and every process it started; returns once they are gone."""
        self.cancelled = True
        kill_process_tree(self.process, grace_seconds=grace_seconds)
        self._reader.join(timeout=grace_seconds)
        self.poll()


def kill_process_tree(process: subprocess.Popen, *, grace_seconds: float = 3.0) -> None:
    """Terminate a process started by ``WorkerProcess`` together with its descendants."""
    if os.name == "nt":
        if process.poll() is None:
            # taskkill /T follows the parent-child links that Windows keeps.
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                capture_output=True,
                check=False,
            )
        process.wait(timeout=grace_seconds)
        return
    # The worker leads its own process group (start_new_session), so the group id is its pid;
    # signalling the group reaches grandchildren even after the launcher has exited.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        if _wait_group_gone(process, grace_seconds):
            break
    process.wait(timeout=grace_seconds)


def _wait_group_gone(process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        process.poll()  # reap the direct child, else it stays a zombie member of the group
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# --- Segments and volume table ---------------------------------------------------------------


@dataclass(frozen=True)
class SegmentSpec:
    """How one tumour label becomes a Slicer segment."""

    segment_id: str
    name: str
    color: tuple[float, float, float]
    terminology: str
    label_value: int  # value in the worker's output label map


def segment_specs() -> list[SegmentSpec]:
    """The three segments, from the single label definition (``labels.py``)."""
    values = CONVENTIONS[WORKER_LABEL_CONVENTION]
    return [
        SegmentSpec(
            segment_id=label.key,
            name=label.name,
            color=label.color,
            terminology=terminology_entry(label),
            label_value=values[label.key],
        )
        for label in LABELS
    ]


@dataclass(frozen=True)
class VolumeRow:
    """One row of the volume table."""

    key: str
    name: str
    volume_ml: float


def volume_rows(
    report: Mapping[str, Any] | None,
    label_counts: Mapping[int, int] | None = None,
    voxel_volume_ml: float | None = None,
) -> list[VolumeRow]:
    """Volumes (mL) of NCR, ED, ET and of the regions ET, TC, WT.

    Taken from the worker's report when it has them, else computed from ``label_counts``
    (voxels per label value of the worker's label map) times ``voxel_volume_ml``.
    """
    report = report or {}
    labels_ml = dict(report.get("volumes_ml") or {})
    regions_ml = dict(report.get("regions_ml") or {})
    values = CONVENTIONS[WORKER_LABEL_CONVENTION]
    if not all(k in labels_ml for k in LABEL_BY_KEY):
        if label_counts is None or voxel_volume_ml is None:
            raise ValueError("the report has no volumes and no label map was given to count")
        labels_ml = {
            key: label_counts.get(values[key], 0) * voxel_volume_ml for key in LABEL_BY_KEY
        }
    for region, keys in REGIONS.items():
        regions_ml.setdefault(region, sum(float(labels_ml[k]) for k in keys))
    rows = [VolumeRow(label.key, label.name, float(labels_ml[label.key])) for label in LABELS]
    rows += [VolumeRow(r, REGION_NAMES[r], float(regions_ml[r])) for r in REGIONS]
    return rows


def read_report(output_dir: str | Path) -> dict[str, Any] | None:
    """The worker's report.json, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(output_dir) / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def result_segmentation_path(output_dir: str | Path, done: ProgressEvent | None) -> Path:
    """Where the worker wrote the label map (its ``outputs`` if it said, else the default)."""
    outputs = done.outputs if done is not None else {}
    for key in ("segmentation", "segmentation_nifti", "nifti"):
        value = outputs.get(key)
        if isinstance(value, str) and value.lower().endswith((".nii", ".nii.gz")):
            path = Path(value)
            return path if path.is_absolute() else Path(output_dir) / path
    return Path(output_dir) / SEGMENTATION_FILE


# --- Dependencies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """A package the worker imports, and how to install it into Slicer's Python."""

    import_names: tuple[str, ...]  # any one of them satisfies the requirement
    pip_name: str
    purpose: str
    # antspyx pins old numpy/scipy; --no-deps keeps Slicer's own versions in place.
    no_deps: bool = False


WORKER_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement(("onnxruntime",), "onnxruntime", "running the network"),
    Requirement(("nibabel",), "nibabel", "reading and writing NIfTI"),
    Requirement(("nrrd",), "pynrrd", "reading and writing NRRD"),
    # Slicer bundles SimpleITK, so antspyx is only installed where SimpleITK is absent.
    Requirement(("SimpleITK", "ants"), "antspyx", "bias-field correction", no_deps=True),
)
TENSORFLOW_REQUIREMENT = Requirement(("tensorflow",), "tensorflow", "running Keras models")


def missing_requirements(
    is_installed: Callable[[str], bool], *, keras_model: bool = False
) -> list[Requirement]:
    """Requirements none of whose import names is installed.

    ``is_installed`` answers for an import name (e.g. via ``importlib.util.find_spec``, which
    finds a package without importing it).
    """
    needed = [*WORKER_REQUIREMENTS, *([TENSORFLOW_REQUIREMENT] if keras_model else [])]
    return [r for r in needed if not any(is_installed(name) for name in r.import_names)]


def pip_install_arguments(
    missing: Sequence[Requirement], constraints_file: str | Path | None = None
) -> list[str]:
    """Arguments for ``slicer.util.pip_install``, one string per pip call.

    Packages that may pull old numpy/scipy get ``--no-deps``; the rest are installed with a
    constraints file pinning the packages Slicer bundles, so pip cannot downgrade them.
    """
    constraint = f' -c "{constraints_file}"' if constraints_file else ""
    plain = [r.pip_name for r in missing if not r.no_deps]
    calls = [" ".join(plain) + constraint] if plain else []
    calls += [f"{r.pip_name} --no-deps" for r in missing if r.no_deps]
    return calls


def is_importable(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    from importlib.util import find_spec

    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def constraints_text(installed: Mapping[str, str], pinned: Iterable[str]) -> str:
    """pip constraints pinning the bundled packages (``pinned``) to their installed versions."""
    lines = [f"{name}=={installed[name]}" for name in pinned if name in installed]
    return "\n".join(lines) + ("\n" if lines else "")


BUNDLED_PACKAGES: tuple[str, ...] = ("numpy", "scipy", "SimpleITK", "vtk", "itk")


def library_parent() -> Path:
    """The folder that holds the ``BrainTumorSegLib`` package (goes on the worker's path)."""
    return Path(__file__).resolve().parent.parent


def default_python() -> str:
    """Interpreter for the worker outside Slicer (inside Slicer: ``PythonSlicer``)."""
    return sys.executable


@dataclass
class SelfTestCase:
    """The in-Slicer self-test's synthetic case; arrays are [k, j, i] as Slicer indexes them."""

    images: dict[str, np.ndarray]  # float32 per sequence
    ijk_to_ras: np.ndarray  # 4x4
    edema: np.ndarray  # bool: the whole planted lesion


def self_test_case(seed: int = 0) -> SelfTestCase:
    """A 64x72x56 head-like phantom with a tumour, 2 mm voxels on an LPS-ordered grid (as
    BraTS files). Shared by the self-test and the tests of N4 on it, so they cannot drift."""
    shape = (56, 72, 64)  # [k, j, i]
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (i / 0.8) ** 2 + (j / 0.9) ** 2 + (k / 0.75) ** 2 < 1
    distance = (i - 0.25) ** 2 + (j - 0.1) ** 2 + k**2
    core, edema = distance < 0.04, distance < 0.12  # the core holds the enhancing rim
    rim = core & (distance > 0.02)
    # Signal of (brain, enhancing rim, edema) per sequence.
    contrast = {"t1": (600, -150, -50), "t1ce": (650, 400, -100), "t2": (500, 300, 500),
                "flair": (450, 250, 600)}  # fmt: skip
    rng = np.random.default_rng(seed)
    images = {}
    for sequence in SEQUENCES:
        base, enhancing, oedema = contrast[sequence]
        array = brain * base + edema * oedema + rim * enhancing
        images[sequence] = np.clip(array + brain * rng.normal(0, 20, shape), 0, None).astype(
            np.float32
        )
    ijk_to_ras = np.diag([-2.0, -2.0, 2.0, 1.0])
    ijk_to_ras[:3, 3] = (64.0, 72.0, -56.0)
    return SelfTestCase(images=images, ijk_to_ras=ijk_to_ras, edema=edema)
