"""``braintumorseg batch INPUT_DIR --output OUT_DIR``: segment every case folder of a folder.

Each case runs in its own worker process (``python -m BrainTumorSegLib segment``), so a case
that crashes or is killed cannot take the others down and all its memory is returned. Results
go to ``OUT_DIR/<case>/`` through :func:`~BrainTumorSegLib.write.staged_output`, so an output
folder either holds a complete result or does not exist. A case is done when its folder holds
``report.json`` and every file the report lists; done cases are skipped, which makes a batch
resumable after Ctrl-C, a kill or a power cut. ``OUT_DIR/batch_status.csv`` records each
case's status (ok / error with the message / skipped), rewritten atomically after every case.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import InputError
from .load import strip_image_suffix
from .report import report_warnings
from .write import (
    REPORT_JSON,
    STAGING_PREFIX,
    check_output_dir,
    host_tag,
    remove_stale_staging,
)

STATUS_CSV = "batch_status.csv"
STATUS_FIELDS = ("case", "status", "message", "seconds", "output")
EXIT_OK, EXIT_CASE_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
# Seconds a worker gets to clean up after SIGTERM before it is killed.
TERMINATE_GRACE_S = 10.0
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


@dataclass
class CaseStatus:
    """One row of ``batch_status.csv``."""

    case: str
    status: str  # "ok", "error" or "skipped"
    message: str = ""
    seconds: float = 0.0
    output: str = ""


def find_cases(input_dir: Path, output_dir: Path | None = None) -> list[Path]:
    """Subfolders of ``input_dir`` holding at least one image file, sorted by name.

    Hidden folders and the output folder (when it lies inside ``input_dir``) are not cases.
    Whether a folder holds all four sequences is for its own run to check and report.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError("input folder not found or not a folder", input_dir)
    skip = Path(output_dir).resolve() if output_dir is not None else None
    cases = []
    for folder in sorted(input_dir.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or folder.resolve() == skip:
            continue
        if any(strip_image_suffix(f.name) is not None for f in folder.iterdir() if f.is_file()):
            cases.append(folder)
    return cases


def _finished_report(case_output: Path) -> dict[str, Any] | None:
    """The report of a complete result in ``case_output`` (a readable report and every file it
    lists, looked up by name so a moved output folder still counts), else None."""
    try:
        report = json.loads((case_output / REPORT_JSON).read_text(encoding="utf-8"))
        names = [Path(p).name for p in report["outputs"].values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    complete = bool(names) and all((case_output / name).is_file() for name in names)
    return report if complete else None


def is_done(case_output: Path) -> bool:
    """True when ``case_output`` holds a complete result."""
    return _finished_report(case_output) is not None


def segment_options(args: argparse.Namespace) -> list[str]:
    """The ``segment`` options the user gave to ``batch``, as command-line arguments.

    Built from the shared option definitions (``cli.add_run_options``), so an option added
    there is passed on without a change here.
    """
    from .cli import add_run_options

    probe = argparse.ArgumentParser(add_help=False)
    add_run_options(probe)
    probe.add_argument("--reference", default=None)
    argv: list[str] = []
    for dest, default in vars(probe.parse_args([])).items():
        value = getattr(args, dest, default)
        if value == default or value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False and default is None:  # a --no-X switch against a model default
            argv.append("--no-" + dest.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, Path):
            argv += [flag, str(value.resolve())]  # workers may not share the cwd's meaning
        else:
            argv += [flag, str(value)]
    return argv


def _die_with_parent() -> None:
    """In a worker, before exec: get SIGTERM when the batch process dies (Linux), so that a
    killed batch leaves no orphan still writing; SIGTERM lets the worker clean up."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Worker:
    case: Path
    process: subprocess.Popen
    stderr: IO[bytes]
    started: float


def _start(case: Path, output_dir: Path, options: list[str]) -> _Worker:
    command = [
        sys.executable,
        "-m",
        "BrainTumorSegLib",
        "segment",
        "--input-dir",
        str(case.resolve()),
        "--output",
        str((output_dir / case.name).resolve()),
        "--quiet",
        *options,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_PARENT), *filter(None, [env.get("PYTHONPATH")])]
    )
    # An anonymous temporary file (unlinked at once on POSIX): a kill leaves nothing behind,
    # and unlike a pipe it cannot fill up and stall a chatty worker.
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed once the worker ends
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=env,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    return _Worker(case, process, stderr, time.monotonic())


def _outcome(worker: _Worker, code: int, output_dir: Path) -> CaseStatus:
    worker.stderr.seek(0)
    text = worker.stderr.read().decode("utf-8", "replace")
    worker.stderr.close()
    seconds = round(time.monotonic() - worker.started, 1)
    case_output = output_dir / worker.case.name
    report = _finished_report(case_output) if code == 0 else None
    if report is not None:
        # The worker ran --quiet: its warnings (e.g. removed tumour components) go in the CSV.
        message = " | ".join(report_warnings(report))
        return CaseStatus(worker.case.name, "ok", message, seconds, str(case_output))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        message = errors[-1][len("error: ") :]
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        message = f"worker killed by signal {name}"
    elif code == EXIT_INTERRUPTED:
        message = "interrupted"
    elif code == 0:
        message = "worker finished but the output is incomplete"
    else:
        message = lines[-1] if lines else f"worker failed with exit code {code}"
    return CaseStatus(worker.case.name, "error", message, seconds, "")


def write_status(path: Path, rows: list[CaseStatus]) -> None:
    """Rewrite the status CSV atomically (a reader never sees half a file)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STATUS_FIELDS)
    for row in rows:
        writer.writerow([row.case, row.status, row.message, f"{row.seconds:g}", row.output])
    # Named like a staging folder, with this process's id, so that a later run removes it if
    # this process is killed between the write and the rename.
    temporary = path.parent / f"{STAGING_PREFIX}{os.getpid()}-{host_tag()}-status.csv"
    temporary.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(temporary, path)


class _Display:
    """A progress bar over cases on a terminal, else one line per finished case."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=sys.stderr, unit="case", desc="batch")

    def case(self, row: CaseStatus) -> None:
        self.done += 1
        text = f"{row.case}: {row.status}" + (f" ({row.message})" if row.message else "")
        if self.bar is not None:
            self.bar.update(1)
            if row.status == "error":
                self.bar.write(f"error: {text}", file=sys.stderr)
        elif not self.quiet:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_batch(
    input_dir: Path,
    output_dir: Path,
    options: list[str],
    *,
    jobs: int = 1,
    quiet: bool = False,
) -> list[CaseStatus]:
    """Segment every case of ``input_dir`` into ``output_dir``; returns one status per case.

    ``options`` are ``segment`` command-line options given to every case. Raises
    :class:`InputError` for a bad input or output folder, ``KeyboardInterrupt`` when
    interrupted (after stopping the workers, which remove their staging folders).
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, not {jobs}")
    if output_dir.resolve() == input_dir.resolve():
        raise InputError(
            "output folder is the input folder; choose another folder so that results are "
            "never mixed with the cases",
            output_dir,
        )
    cases = find_cases(input_dir, output_dir)
    if not cases:
        raise InputError("no case folders (subfolders holding image files) found", input_dir)
    check_output_dir(output_dir, [])
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir)
    status_path = output_dir / STATUS_CSV

    rows: dict[str, CaseStatus] = {}
    pending: deque[Path] = deque()
    for case in cases:
        if is_done(output_dir / case.name):
            rows[case.name] = CaseStatus(
                case.name, "skipped", "already done", 0.0, str(output_dir / case.name)
            )
        else:
            pending.append(case)
    display = _Display(len(cases), quiet)
    for row in rows.values():
        display.case(row)

    def ordered() -> list[CaseStatus]:
        return [rows[c.name] for c in cases if c.name in rows]

    write_status(status_path, ordered())
    running: list[_Worker] = []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                running.append(_start(pending.popleft(), output_dir, options))
            for worker in list(running):
                code = worker.process.poll()
                if code is None:
                    continue
                running.remove(worker)
                row = _outcome(worker, code, output_dir)
                rows[row.case] = row
                write_status(status_path, ordered())
                display.case(row)
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(running)
        for worker in running:
            rows[worker.case.name] = CaseStatus(worker.case.name, "error", "interrupted")
        write_status(status_path, ordered())
        raise
    finally:
        display.close()
    return ordered()


def _stop(workers: list[_Worker]) -> None:
    """SIGTERM every worker (each removes its staging folder), then kill stragglers."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.stderr.close()


def run_batch_command(args: argparse.Namespace) -> int:
    """``braintumorseg batch``: exit 0 when every case is ok or already done, 1 when any case
    failed, 2 for a bad input/output folder, 130 when interrupted."""
    options = segment_options(args)
    if args.threads is None and args.jobs > 1:
        # Share the cores between the cases running at once instead of oversubscribing.
        options += ["--threads", str(max(1, (os.cpu_count() or 1) // args.jobs))]
    try:
        rows = run_batch(args.input_dir, args.output, options, jobs=args.jobs, quiet=args.quiet)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "interrupted; finished cases are kept, run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "error")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"{len(rows)} cases: {summary}; status in {Path(args.output) / STATUS_CSV}")
    return EXIT_CASE_FAILED if counts["error"] else EXIT_OK
