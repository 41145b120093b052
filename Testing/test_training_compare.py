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
    assert "A = old, B = new, 12 cases in both" in out and out.count("[B better]") == 6
    assert rows["dice_ET"]["sign_p"] == pytest.approx(2 / 2**12)
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


def test_a_worse_candidate_and_too_few_cases(tmp_path: Path, capsys):
    base = list(np.linspace(0.4, 0.8, 10))
    a = _table(tmp_path / "runs" / "a" / "out-of-fold", _cases(base, [5.0] * 10))
    b = _table(tmp_path / "runs" / "b" / "out-of-fold", _cases([x - 0.1 for x in base], [9.0] * 10))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    # Both folders end in out-of-fold: the default names go up to where they differ.
    assert "A = a/out-of-fold, B = b/out-of-fold" in out
    # Lower Dice and higher HD95 are both worse.
    assert out.count("[B worse]") == 6 and "[B better]" not in out
    # Three cases that all gain: the interval excludes 0, but three cases decide nothing.
    few = [f"case{i}" for i in range(3)]
    a3 = _table(tmp_path / "a3", _cases([0.5] * 3, [5.0] * 3, few))
    b3 = _table(tmp_path / "b3", _cases([0.6] * 3, [4.0] * 3, few))
    assert main(["compare", str(a3), str(b3), "--output", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "no verdict" in out and out.count("[too few cases]") == 6
    assert not _rows(tmp_path / "c")["dice_WT"]["clear"]
    assert _rows(tmp_path / "c")["dice_WT"]["verdict"] == "too few cases"
    assert _rows(tmp_path / "c")["dice_WT"]["sign_p"] == pytest.approx(0.25)


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
    out = ["--output", str(tmp_path / "c")]
    assert main(["compare", str(a), str(b), *out]) == 2
    assert "share no case" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "missing"), *out]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "no cases.csv here" in err
    other = tmp_path / "other.csv"
    other.write_text("case,score\nx,1\n")
    assert main(["compare", str(a), str(other), *out]) == 2
    err = capsys.readouterr().err
    assert "other.csv" in err and "not a per-case score table" in err
    # A case listed twice, a missing case id, a score that is not finite: each named.
    header, row = (a / "cases.csv").read_text().splitlines()
    for name, lines, message in (
        ("twice", [header, row, row], "case x is listed twice (line 3)"),
        ("no-id", [header, "," + row.split(",", 1)[1]], "line 2 has no case_id"),
        ("nan", [header, row.replace("0.5", "nan", 1)], "not a finite number"),
    ):
        bad = tmp_path / name / "cases.csv"
        bad.parent.mkdir()
        bad.write_text("\n".join(lines) + "\n")
        assert main(["compare", str(a), str(bad), *out]) == 2
        err = capsys.readouterr().err
        assert message in err and name in err, err
    assert not (tmp_path / "c").exists()
