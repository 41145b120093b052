"""``compare``: is model B really better than model A on the same cases?

Reads two per-case score tables (``cases.csv`` written by ``evaluate``, ``crossval``,
``crossval-ensemble`` or ``postprocessing``) and pairs them case by case. For each region it
reports both means, the mean difference B - A with a paired bootstrap 95 % interval (the cases
are resampled together, so what the two share, such as a hard case, cancels out), and on how
many cases B is better, worse or equal, with the two-sided sign-test p-value of those counts.
Below ``MIN_CASES`` shared cases no verdict is given at all. With a few dozen cases a
difference of a few hundredths of Dice is often inside that interval: the table says so instead
of leaving it to a glance at two means. Writes ``comparison.csv``/``comparison.json`` and
``comparison.png`` (each case's Dice under A and under B, joined by a line).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.labels import REGIONS

from .metrics import bootstrap_ci

# Measures compared, and whether a higher value is better.
COMPARED = {"dice": True, "hd95": False}
# Differences smaller than this count as a tie (rounding in the tables, not a change).
TIE = 1e-6
# Fewer shared cases than this get no verdict: a percentile interval of very few paired
# differences that share a sign excludes zero whatever their number (one case would do).
MIN_CASES = 10


def read_case_scores(path: Path) -> dict[str, dict[str, float]]:
    """Per-case scores of a ``cases.csv`` (or of the folder holding one), keyed by case id."""
    file = path / "cases.csv" if path.is_dir() else path
    if not file.is_file():
        raise InputError("no cases.csv here (give a folder written by evaluate, or the file)", path)
    with open(file, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    needed = {f"{m}_{r}" for m in COMPARED for r in REGIONS}
    if not rows or "case_id" not in rows[0] or not needed <= set(rows[0]):
        raise InputError(
            f"not a per-case score table (needs case_id and {', '.join(sorted(needed))})", file
        )
    scores: dict[str, dict[str, float]] = {}
    for line, row in enumerate(rows, start=2):
        case = (row["case_id"] or "").strip()
        if not case:
            raise InputError(f"line {line} has no case_id", file)
        if case in scores:
            raise InputError(f"case {case} is listed twice (line {line})", file)
        try:
            values = {k: float(row[k]) for k in needed}
        except (TypeError, ValueError) as e:
            raise InputError(f"case {case}: a score is not a number ({e})", file) from e
        bad = sorted(k for k, v in values.items() if not math.isfinite(v))
        if bad:
            raise InputError(f"case {case}: {', '.join(bad)} not a finite number", file)
        scores[case] = values
    return scores


def sign_test_p(better: int, worse: int) -> float:
    """Exact two-sided sign-test p-value of ``better`` against ``worse`` (ties left out)."""
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(better, worse) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def compare_scores(
    a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Paired comparison of B against A over the cases both tables hold."""
    cases = sorted(set(a) & set(b))
    if not cases:
        raise ValueError("the two tables share no case")
    enough = len(cases) >= MIN_CASES
    rows = []
    for measure, higher_is_better in COMPARED.items():
        for region in REGIONS:
            key = f"{measure}_{region}"
            va = np.array([a[c][key] for c in cases])
            vb = np.array([b[c][key] for c in cases])
            diff = vb - va
            gain = diff if higher_is_better else -diff
            low, high = bootstrap_ci(diff)
            better, worse = int((gain > TIE).sum()), int((gain < -TIE).sum())
            # The interval excludes zero (with enough cases to say so): a difference these
            # cases support, named by its direction (for HD95 a lower B is the better one).
            clear = enough and (low > 0 or high < 0)
            if not enough:
                verdict = "too few cases"
            elif clear:
                verdict = "B better" if gain.mean() > 0 else "B worse"
            else:
                verdict = "within the interval: no clear difference"
            rows.append(
                {
                    "measure": key,
                    "mean_a": float(va.mean()),
                    "mean_b": float(vb.mean()),
                    "difference": float(diff.mean()),
                    "ci95_low": low,
                    "ci95_high": high,
                    "b_better": better,
                    "b_worse": worse,
                    "equal": int((np.abs(diff) <= TIE).sum()),
                    "sign_p": sign_test_p(better, worse),
                    "clear": bool(clear),
                    "verdict": verdict,
                }
            )
    return {
        "cases": cases,
        "only_in_a": sorted(set(a) - set(b)),
        "only_in_b": sorted(set(b) - set(a)),
        "rows": rows,
    }


def comparison_plot(
    path: Path,
    a: dict[str, dict[str, float]],
    b: dict[str, dict[str, float]],
    cases: list[str],
    names: tuple[str, str],
) -> None:
    """Each case's Dice under A and under B, joined by a line, one panel per region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REGIONS), figsize=(3.2 * len(REGIONS), 4), sharey=True)
    for ax, region in zip(axes, REGIONS):
        key = f"dice_{region}"
        va = np.array([a[c][key] for c in cases])
        vb = np.array([b[c][key] for c in cases])
        for y0, y1 in zip(va, vb):
            colour = "tab:green" if y1 > y0 + TIE else "tab:red" if y1 < y0 - TIE else "grey"
            ax.plot([0, 1], [y0, y1], color=colour, alpha=0.6, marker="o", markersize=3)
        ax.plot([0, 1], [va.mean(), vb.mean()], color="black", linewidth=2.5, label="mean")
        ax.set_xticks([0, 1], list(names))
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(f"Dice {region}, n={len(cases)}")
    axes[0].set_ylim(0, 1)
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_comparison(
    result: dict[str, Any],
    out_dir: Path,
    a: dict[str, dict[str, float]],
    b: dict[str, dict[str, float]],
    names: tuple[str, str],
) -> None:
    """``comparison.csv``, ``comparison.json`` and ``comparison.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # The plot first: if drawing fails, no table is left behind without it.
    comparison_plot(out_dir / "comparison.png", a, b, result["cases"], names)
    document = {"a": names[0], "b": names[1], **result}
    (out_dir / "comparison.json").write_text(
        json.dumps(document, indent=1) + "\n", encoding="utf-8"
    )
    with open(out_dir / "comparison.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        writer.writeheader()
        writer.writerows(result["rows"])


def print_comparison(result: dict[str, Any], names: tuple[str, str]) -> None:
    """One line per measure and region: both means, B - A with its interval, case counts."""
    print(f"A = {names[0]}, B = {names[1]}, {len(result['cases'])} cases in both")
    for side, key in (("A", "only_in_a"), ("B", "only_in_b")):
        if result[key]:
            print(f"warning: left out, only in {side}: {', '.join(result[key])}")
    if len(result["cases"]) < MIN_CASES:
        print(f"fewer than {MIN_CASES} shared cases: no verdict, read the figures only")
    for row in result["rows"]:
        digits = 3 if row["measure"].startswith("dice") else 1
        print(
            f"{row['measure']:>9}: A {row['mean_a']:.{digits}f}  B {row['mean_b']:.{digits}f}  "
            f"B-A {row['difference']:+.{digits}f} (95 % CI {row['ci95_low']:+.{digits}f} to "
            f"{row['ci95_high']:+.{digits}f})  B better on {row['b_better']}, worse on "
            f"{row['b_worse']}, equal on {row['equal']} (sign test p={row['sign_p']:.2g})"
            f"  [{row['verdict']}]"
        )


def default_names(a: Path, b: Path) -> tuple[str, str]:
    """Short names of two tables: the last folder names that tell them apart.

    ``runs/a/out-of-fold`` and ``runs/b/out-of-fold`` become ``a/out-of-fold`` and
    ``b/out-of-fold``; the same folder twice gives ``A`` and ``B``.
    """
    parts = [(p if p.is_dir() else p.parent).resolve().parts for p in (a, b)]
    for depth in range(1, max(len(parts[0]), len(parts[1])) + 1):
        first, second = ("/".join(q[-depth:]) for q in parts)
        if first != second:
            return first, second
    return "A", "B"


def cmd_compare(args: argparse.Namespace) -> int:
    paths = (Path(args.a), Path(args.b))
    names = tuple(args.names or default_names(*paths))
    a, b = (read_case_scores(p) for p in paths)
    try:
        result = compare_scores(a, b)
    except ValueError as e:
        raise InputError(f"{e}: nothing to compare with {paths[0]}", paths[1]) from e
    print_comparison(result, names)
    if args.output:
        write_comparison(result, Path(args.output), a, b, names)
        print(f"tables and plot in {args.output}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``compare`` sub-command."""
    p = sub.add_parser(
        "compare", help="paired comparison of two per-case score tables (B against A)"
    )
    p.add_argument("a", help="folder with cases.csv (or the file) of the reference, A")
    p.add_argument("b", help="folder with cases.csv (or the file) of the candidate, B")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="short names for the output")
    p.add_argument("--output", help="folder for comparison.csv/.json and comparison.png")
    p.set_defaults(func=cmd_compare)
