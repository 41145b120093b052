#!/usr/bin/env python3
"""The two commands of the README; each sets up everything it needs on a fresh machine.

    python3 run.py demo    # segment a generated example case, outputs in demo-output/
    python3 run.py check   # lint (ruff) and tests (pytest)

Both create a virtual environment in .venv (once) and install the project into it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
DEMO_DIR = ROOT / "demo-output"


def run(*args: object) -> None:
    """Run a command from the project root; stop with its exit code if it fails."""
    print("+", " ".join(str(a) for a in args), flush=True)
    code = subprocess.call([str(a) for a in args], cwd=ROOT)
    if code != 0:
        sys.exit(code)


def ensure_environment(extras: str) -> None:
    """Create .venv and install the project with ``extras`` (quick when already installed)."""
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
        run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    stamp = VENV / f".installed-{extras}"
    pyproject = ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < pyproject.stat().st_mtime:
        run(PYTHON, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]")
        stamp.touch()


def demo() -> None:
    """Generate a phantom case and segment it with the bundled model."""
    ensure_environment("bias,demo")
    case = DEMO_DIR / "input"
    run(PYTHON, "-m", "BrainTumorSegLib.phantom", "--output", case)
    run(BIN / "braintumorseg", "segment", "--input-dir", case, "--output", DEMO_DIR / "result")
    print(f"\nDemo outputs: {DEMO_DIR / 'result'} (open overlay.png; truth in {case})")


def check() -> None:
    """Lint and test."""
    ensure_environment("dev")
    run(PYTHON, "-m", "ruff", "check", ".")
    run(PYTHON, "-m", "ruff", "format", "--check", ".")
    run(PYTHON, "-m", "pytest", *sys.argv[2:])


COMMANDS = {"demo": demo, "check": check}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 run.py {{{'|'.join(COMMANDS)}}} [pytest options for check]")
    COMMANDS[sys.argv[1]]()
