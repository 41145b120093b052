"""Progress of a run, shown as a terminal bar, JSON lines for the Slicer module, or a callback."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

# Share of the whole run each stage usually takes; fractions within a stage are scaled by it.
STAGE_WEIGHTS: dict[str, float] = {
    "load": 0.06,
    "validate": 0.02,
    "conform": 0.04,
    "preprocess": 0.15,
    "infer": 0.55,
    "restore": 0.06,
    "postprocess": 0.03,
    "write": 0.09,
}

Callback = Callable[[str, float, str], None]


class Progress:
    """Tracks stage timings and forwards overall progress (0..1) to one output.

    ``mode``: "bar" (tqdm on stderr), "json" (one JSON object per line on ``stream``),
    "callback" (``callback(stage, fraction, message)``) or "none".
    """

    def __init__(
        self,
        mode: str = "none",
        *,
        callback: Callback | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.mode = mode
        self.callback = callback
        self.stream = stream or sys.stdout
        self.timings: dict[str, float] = {}
        self._done_weight = 0.0
        self._stage = ""
        self._bar: Any = None

    @contextmanager
    def stage(self, name: str, message: str = "") -> Iterator[Callable[[float, str], None]]:
        """Time a stage; yields ``update(fraction, message)`` for progress within it."""
        self._stage = name
        weight = STAGE_WEIGHTS.get(name, 0.05)
        start = time.perf_counter()

        def update(fraction: float, text: str = "") -> None:
            fraction = min(max(fraction, 0.0), 1.0)
            self.emit(name, self._done_weight + weight * fraction, text or message or name)

        update(0.0, message or name)
        try:
            yield update
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)
            self._done_weight += weight

    def emit(self, stage: str, overall: float, message: str, **extra: Any) -> None:
        """Send one progress event to the configured output."""
        overall = round(min(max(overall, 0.0), 1.0), 4)
        if self.mode == "json":
            event = {"stage": stage, "fraction": overall, "message": message, **extra}
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()
        elif self.mode == "bar":
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}")
            self._bar.n = int(overall * 1000)
            self._bar.set_description_str(f"{stage}: {message}"[:48].ljust(48))
            self._bar.refresh()
        elif self.mode == "callback" and self.callback is not None:
            self.callback(stage, overall, message)

    def finish(self, message: str, **extra: Any) -> None:
        """Final event of a successful run."""
        self.emit("done", 1.0, message, **extra)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def fail(self, message: str) -> None:
        """Final event of a failed run (the JSON consumer shows ``message`` to the user)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.mode in ("json", "callback"):
            self.emit("error", 1.0, message)
