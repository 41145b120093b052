"""Static checks of the Slicer extension: CMake lists, the .ui file, imports, packaging."""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "BrainTumorSeg"
MODULE_PY = MODULE / "BrainTumorSeg.py"
UI_FILE = MODULE / "Resources" / "UI" / "BrainTumorSeg.ui"
IGNORED_PARTS = {"__pycache__", ".pytest_cache"}


# --- CMake lists -----------------------------------------------------------------------------


def cmake_list(text: str, variable: str, module_name: str = "BrainTumorSeg") -> list[str]:
    """Entries of ``set(<variable> ...)`` with ``${MODULE_NAME}`` expanded."""
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, flags=re.S)
    assert match, f"set({variable} ...) not found"
    body = re.sub(r"#[^\n]*", "", match.group(1))
    return [item.replace("${MODULE_NAME}", module_name) for item in body.split()]


def installable_files() -> tuple[set[str], set[str]]:
    """What must be installed: the module's .py files and everything under Resources/."""
    scripts = {"BrainTumorSeg.py"} | {
        p.relative_to(MODULE).as_posix()
        for p in (MODULE / "BrainTumorSegLib").rglob("*.py")
        if not IGNORED_PARTS & set(p.parts)
    }
    resources = {
        p.relative_to(MODULE).as_posix()
        for p in (MODULE / "Resources").rglob("*")
        if p.is_file() and not IGNORED_PARTS & set(p.parts) and p.suffix != ".pyc"
    }
    return scripts, resources


def test_cmake_lists_match_the_files_present() -> None:
    text = (MODULE / "CMakeLists.txt").read_text()
    listed_scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    listed_resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    scripts, resources = installable_files()
    assert len(listed_scripts) == len(set(listed_scripts)), "a script is listed twice"
    assert sorted(set(listed_scripts) - scripts) == [], "listed scripts that do not exist"
    assert sorted(scripts - set(listed_scripts)) == [], "scripts missing from SCRIPTS"
    assert sorted(set(listed_resources) - resources) == [], "listed resources that do not exist"
    assert sorted(resources - set(listed_resources)) == [], "resources missing from RESOURCES"


def test_cmake_list_check_can_fail(tmp_path: Path) -> None:
    text = "set(MODULE_PYTHON_SCRIPTS\n  ${MODULE_NAME}.py  # main\n  Lib/gone.py\n  )"
    assert cmake_list(text, "MODULE_PYTHON_SCRIPTS") == ["BrainTumorSeg.py", "Lib/gone.py"]


def test_module_cmake_builds_scripted_module_with_tests() -> None:
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text
    assert "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)


def test_top_cmake_has_extension_metadata() -> None:
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS"):  # fmt: skip
        assert re.search(rf"set\({key}\s+\"[^\"]+\"\)", text), key
    assert 'set(EXTENSION_HOMEPAGE "https://github.com/braintumorseg/BrainTumorSeg")' in text
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert 'set(EXTENSION_DEPENDS "NA")' in text
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "add_subdirectory(BrainTumorSeg)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                 "include(${Slicer_EXTENSION_CPACK})"):  # fmt: skip
        assert line in text


def test_catalogue_entry() -> None:
    entry = json.loads((ROOT / "BrainTumorSeg.json").read_text())
    assert entry["category"] == "Segmentation"
    assert entry["scm_url"].startswith("https://github.com/braintumorseg/BrainTumorSeg")
    assert entry["scm_revision"]
    assert isinstance(entry["build_dependencies"], list)
    assert entry["tier"] in (1, 3, 5)


@pytest.mark.parametrize(
    "path", [ROOT / "Resources" / "BrainTumorSeg.png", MODULE / "Resources/Icons/BrainTumorSeg.png"]
)
def test_icons_are_128_pixel_pngs(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
    assert len(data) < 64 * 1024


# --- The .ui file and the Python that uses it ---------------------------------------------------

# Widget classes fitting what the code does with them (by name suffix).
FITTING_CLASSES = {
    "Selector": {"qMRMLNodeComboBox", "QComboBox"},
    "Button": {"QPushButton", "ctkCollapsibleButton", "QToolButton"},
    "Table": {"QTableWidget"},
    "SpinBox": {"QSpinBox"},
    "CheckBox": {"QCheckBox"},
    "ProgressBar": {"QProgressBar"},
    "Label": {"QLabel"},
    "TextEdit": {"QPlainTextEdit"},
}


def ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget") if w.get("name")}


def used_ui_names() -> set[str]:
    """Every ``self.ui.<name>`` and ``getattr(self.ui, "<name>")`` of the module."""
    tree = ast.parse(MODULE_PY.read_text())
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui"):  # fmt: skip
            names.add(node.attr)
    # Selectors are also reached through SELECTOR_NAMES: f"{sequence}Selector".
    names |= {f"{s}Selector" for s in ("t1", "t1ce", "t2", "flair")}
    return names


def test_every_ui_name_used_in_python_exists_with_a_fitting_class() -> None:
    widgets = ui_widgets()
    used = used_ui_names()
    assert len(used) > 10
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in {UI_FILE.name}"
        suffix = next((s for s in FITTING_CLASSES if name.lower().endswith(s.lower())), None)
        assert suffix, f"no expectation for the widget name {name}"
        assert widgets[name].get("class") in FITTING_CLASSES[suffix], name


def parameter_fields() -> dict[str, str]:
    """Fields of the @parameterNodeWrapper class as annotation source text."""
    tree = ast.parse(MODULE_PY.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign)
            }
    raise AssertionError("no @parameterNodeWrapper class")


def test_parameter_names_in_ui_match_parameter_node_fields() -> None:
    fields = parameter_fields()
    bound = {}
    for widget in ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget
    assert set(bound) <= set(fields)
    assert {"t1", "t1ce", "t2", "flair", "outputSegmentation", "biasCorrection", "threads",
            "testTimeAugmentation"} <= set(bound)  # fmt: skip
    for field, widget in bound.items():
        annotation = fields[field]
        cls = widget.get("class")
        if annotation.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", field
            types = [s.text for s in widget.iter("string")]
            assert annotation in types, f"{field}: node types {types}"
        elif annotation == "bool":
            assert cls == "QCheckBox", field
        elif "int" in annotation:
            assert cls == "QSpinBox", field
        else:  # a str with a Choice annotation: Slicer's connector requires a plain QComboBox
            assert cls == "QComboBox" and "Choice(" in annotation, field


def test_ui_scene_is_passed_to_node_selectors() -> None:
    tree = ET.parse(UI_FILE)
    receivers = {c.findtext("receiver") for c in tree.iter("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}  # fmt: skip
    selectors = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors <= receivers


# --- Imports ------------------------------------------------------------------------------------


def test_slicer_glue_never_imports_slicer_or_heavy_packages() -> None:
    tree = ast.parse((MODULE / "BrainTumorSegLib" / "slicer_glue.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"slicer", "qt", "vtk", "ctk", "tensorflow", "keras", "onnxruntime",
                           "nibabel", "nrrd", "ants"}  # fmt: skip


def test_loading_the_module_imports_no_tensorflow_nor_worker_dependencies() -> None:
    """What Slicer imports when it loads the module must work before any pip install."""
    code = (
        f"import sys, json; sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(MODULE)!r}];"
        "import slicer_double; slicer_double.install();"
        "import BrainTumorSeg;"
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = {m.split(".")[0] for m in json.loads(result.stdout.splitlines()[-1])}
    assert "BrainTumorSeg" in loaded and "BrainTumorSegLib" in loaded
    for heavy in ("tensorflow", "keras", "onnxruntime", "nibabel", "nrrd", "ants", "torch"):
        assert heavy not in loaded, f"loading the module imported {heavy}"
