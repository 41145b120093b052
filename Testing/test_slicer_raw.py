"""The raw-scan option of the Slicer module: worker command line, panel widget, logic."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from BrainTumorSegLib import slicer_glue
from BrainTumorSegLib.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
INPUTS = {s: f"/tmp/{s}.nrrd" for s in ("t1", "t1ce", "t2", "flair")}
BASE = ["python", "-m", "BrainTumorSegLib"]


@pytest.mark.parametrize("raw", ["on", "auto"])
def test_worker_command_passes_raw_mode(raw: str) -> None:
    command = slicer_glue.worker_command(BASE, INPUTS, "/tmp/out", raw=raw)
    assert command[command.index("--raw") + 1] == raw
    # and the worker's own parser accepts exactly that command line
    assert build_parser().parse_args(command[3:]).raw == raw


def test_worker_command_default_is_not_raw() -> None:
    command = slicer_glue.worker_command(BASE, INPUTS, "/tmp/out")
    assert "--raw" not in command
    assert build_parser().parse_args(command[3:]).raw == "off"


def test_worker_command_rejects_unknown_raw_mode() -> None:
    with pytest.raises(ValueError, match="raw must be one of"):
        slicer_glue.worker_command(BASE, INPUTS, "/tmp/out", raw="yes")


def test_panel_has_a_raw_selector_bound_to_the_parameter() -> None:
    tree = ET.parse(ROOT / "BrainTumorSeg" / "Resources" / "UI" / "BrainTumorSeg.ui")
    widget = tree.find(".//widget[@name='rawInputSelector']")
    assert widget is not None and widget.get("class") == "QComboBox"
    bound = [p.findtext("string") for p in widget.findall("property")]
    assert "rawInput" in bound
    module = (ROOT / "BrainTumorSeg" / "BrainTumorSeg.py").read_text()
    assert re.search(
        r"rawInput: Annotated\[str, Choice\(list\(slicer_glue.RAW_INPUT_CHOICES", module
    )
    assert "raw=rawInput" in module  # the logic hands the choice to the worker command
    assert slicer_glue.RAW_INPUT_CHOICES[0] == "off"  # the default keeps the normal path
