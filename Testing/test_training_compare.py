"""``python -m Training compare``: paired comparison of two per-case score tables."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from Training.cli import main
from Training.evaluate import score_columns


def _table(path: Path, scores: dict[str, dict[str, float]]) -> Path:
    """A cases.csv as evaluate writes it (every score column present)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "cases.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["case_id", *score_columns()])
        writer.writeheader()
        for case, values in scores.items():
            writer.writerow({"case_id": case, **dict.fromkeys(score_columns(), 0.5), **values})
    return path


def _cases(dice: list[float], hd95: list[float], names: list[str] | None = None):
    names = names or [f"case{i}" for i in range(len(dice))]
    return {
        n: {
            **{f"dice_{r}": d for r in ("ET", "TC", "WT")},
            **{f"hd95_{r}": h for r in ["ET", "TC", "WT"]},
        }
        for n, d, h in zip(names, dice, hd95)
    }


def _rows(folder: Path) -> dict[str, dict]:
    document = json.loads((folder / "comparison.json").read_text())
    return {row["measure"]: row for row in document["rows"]}


def test_a_consistent_gain_is_clear_and_counted(tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.8, 12)
    a = _table(tmp_path / "a", _cases(list(base), [10.0] * 12))
    # B: every case 0.05 better in Dice and 2 mm closer in HD95.
    b = _table(tmp_path / "b", _cases(list(base + 0.05), [8.0] * 12))
    assert (
        main(["compare", str(a), str(b), "--names", "old", "new", "--output", str(tmp_path / "c")])
        == 0
    )
    rows = _rows(tmp_path / "c")
    dice = rows["dice_ET"]
    assert dice["difference"] == pytest.approx(0.05)
    assert dice["ci95_low"] == pytest.approx(0.05) and dice["ci95_high"] == pytest.approx(0.05)
    assert (dice["b_better"], dice["b_worse"], dice["equal"], dice["clear"]) == (12, 0, 0, True)
    # HD95: lower is better, so B's smaller distances count as better.
    assert rows["hd95_WT"]["difference"] == pytest.approx(-2.0)
    assert rows["hd95_WT"]["b_better"] == 12
    out = capsys.readouterr().out
    assert "A = old, B = new, 12 cases in both" in out and "[B higher]" in out
    assert (tmp_path / "c" / "comparison.png").stat().st_size > 1000
    header = (tmp_path / "c" / "comparison.csv").read_text().splitlines()[0]
    assert header.startswith("measure,mean_a,mean_b,difference,ci95_low,ci95_high")


def test_a_noisy_difference_is_not_called_clear(tmp_path: Path, capsys):
    # Half the cases gain 0.3, half lose 0.25: the mean moves +0.025 but the sign is a coin toss.
    base = [0.5] * 10
    moved = [0.8, 0.25] * 5
    a = _table(tmp_path / "a", _cases(base, [5.0] * 10))
    b = _table(tmp_path / "b", _cases(moved, [5.0] * 10))
    assert main(["compare", str(a / "cases.csv"), str(b), "--output", str(tmp_path / "c")]) == 0
    dice = _rows(tmp_path / "c")["dice_TC"]
    assert dice["difference"] == pytest.approx(0.025)
    assert dice["ci95_low"] < 0 < dice["ci95_high"] and not dice["clear"]
    assert (dice["b_better"], dice["b_worse"]) == (5, 5)
    assert _rows(tmp_path / "c")["hd95_TC"]["equal"] == 10
    assert "no clear difference" in capsys.readouterr().out


def test_only_shared_cases_are_paired(tmp_path: Path, capsys):
    a = _table(tmp_path / "a", _cases([0.5, 0.6, 0.7], [1, 2, 3], ["x", "y", "z"]))
    b = _table(tmp_path / "b", _cases([0.6, 0.7, 0.9], [1, 2, 3], ["y", "z", "w"]))
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "c")]) == 0
    document = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert document["cases"] == ["y", "z"]
    assert (document["only_in_a"], document["only_in_b"]) == (["x"], ["w"])
    # y: 0.6 -> 0.6, z: 0.7 -> 0.7 (B's values for y and z are 0.6 and 0.7).
    assert _rows(tmp_path / "c")["dice_WT"]["difference"] == pytest.approx(0.0)
    assert "only in A: x" in capsys.readouterr().out


def test_bad_tables_end_with_a_clear_error(tmp_path: Path, capsys):
    a = _table(tmp_path / "a", _cases([0.5], [1.0], ["x"]))
    b = _table(tmp_path / "b", _cases([0.5], [1.0], ["y"]))
    assert main(["compare", str(a), str(b)]) == 2
    assert "share no case" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "no cases.csv here" in err
    other = tmp_path / "other.csv"
    other.write_text("case,score\nx,1\n")
    assert main(["compare", str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert "other.csv" in err and "not a per-case score table" in err
    assert not (tmp_path / "c").exists()
