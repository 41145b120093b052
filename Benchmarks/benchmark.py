#!/usr/bin/env python3
"""Speed and memory of BrainTumorSeg against the seed pipeline, in one run.

    python Benchmarks/benchmark.py [--case DIR] [--model PKG] [--repeats 3]

Measures, each in fresh processes so that peak memory is per measurement:
  * the seed pipeline as the seed project ran it: N4 (ANTsPy defaults) on each sequence,
    z-score, a 144^3 crop, TensorFlow ``predict`` of the seed 3D U-Net (random weights);
  * our default pipeline end to end, exactly ``braintumorseg segment`` (and with N4 the other way);
  * inference alone of our network on TensorFlow, ONNX Runtime and OpenVINO (when installed);
  * the network's FLOPs, the machine's peak GFLOP/s and the resulting lower bound.
Prints a table with medians and spreads and the ratios; ``--json FILE`` saves every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "BrainTumorSeg"), str(ROOT)]
DEFAULT_CASE = (
    Path(os.environ.get("BRAINTUMORSEG_DATA", ROOT.parent / "shared" / "data"))
    / "brats"
    / "Brats18_2013_3_1"
)


# --------------------------------------------------------------------------- children
# Each measurement runs in its own interpreter (``--child KIND``) and prints one JSON line.


def child_seed(case: Path) -> dict:
    """The seed pipeline: imports, N4 x4 (ANTsPy defaults), z-score, 144^3 crop, TF predict."""
    started = time.perf_counter()
    import ants
    import numpy as np

    from BrainTumorSegLib.load import find_sequences

    timings = {}
    t = time.perf_counter()
    arrays = []
    for path in find_sequences(case).values():
        image = ants.image_read(str(path))
        mask = ants.get_mask(image)
        corrected = ants.n4_bias_field_correction(image, mask=mask)  # the seed's call: defaults
        data = corrected.numpy()
        brain = data[mask.numpy() > 0]
        arrays.append((data - brain.mean()) / brain.std())
    volume = np.stack(arrays, axis=-1).astype(np.float32)
    timings["n4_and_zscore"] = time.perf_counter() - t
    t = time.perf_counter()
    centre = [n // 2 for n in volume.shape[:3]]
    crop = tuple(slice(max(0, c - 72), max(0, c - 72) + 144) for c in centre)
    block = np.zeros((144, 144, 144, 4), np.float32)
    part = volume[crop]
    block[: part.shape[0], : part.shape[1], : part.shape[2]] = part
    timings["crop"] = time.perf_counter() - t
    t = time.perf_counter()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from Training.config import load_config
    from Training.network import build_unet

    config = load_config(ROOT / "Training" / "configs" / "seed.yaml")
    model = build_unet(config.network, input_channels=4, num_outputs=4, input_shape=(144, 144, 144))
    timings["build_model"] = time.perf_counter() - t
    t = time.perf_counter()
    model.predict(block[None], verbose=0)
    timings["predict"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    return {"timings": timings}


def child_ours(case: Path, model: str | None, extra: list[str]) -> dict:
    """Our CLI, exactly as a user runs it; stage times come from its report."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            str(Path(sys.executable).parent / "braintumorseg"),
            "segment",
            "--input-dir",
            str(case),
            "--output",
            out,
            "--quiet",
            *extra,
        ]
        if model:
            command += ["--model", model]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        total = time.perf_counter() - started
        report = json.loads((Path(out) / "report.json").read_text())
    return {"timings": {**report["timings_s"], "total": total}, "regions_ml": report["regions_ml"]}


def _prepared_input(case: Path, model: str | None):
    import numpy as np

    from BrainTumorSegLib.load import find_sequences, load_volume
    from BrainTumorSegLib.model import resolve_model
    from BrainTumorSegLib.preprocess import preprocess

    spec = resolve_model(model)
    volumes = {s: load_volume(p) for s, p in find_sequences(case).items()}
    grid = volumes["t1ce"].grid
    # The network alone: N4 (for a model trained with it) would add its time and memory to
    # these rows; the end-to-end rows include it, and the network sees the same shape.
    images = {s: v.array for s, v in volumes.items()}
    prepared = preprocess(images, grid, spec, bias_correction=False)
    return spec, np.ascontiguousarray(prepared.array[None])


def child_infer(case: Path, model: str | None, runtime: str, repeats: int, threads: int) -> dict:
    """Inference alone (after one warm-up run) on one runtime; returns per-run seconds."""
    import numpy as np

    spec, batch = _prepared_input(case, model)
    onnx_path = spec.folder / spec.file
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run():
            return session.run(None, {name: batch})[0]

    elif runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        network = core.read_model(str(onnx_path))
        network.reshape({network.inputs[0]: list(batch.shape)})
        compiled = core.compile_model(network, "CPU", {"INFERENCE_NUM_THREADS": threads})

        def run():
            return compiled(batch)[0]

    elif runtime == "tensorflow":
        os.environ["KERAS_BACKEND"] = "tensorflow"
        import keras
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        keras_file = spec.keras_file or "model.keras"
        net = keras.models.load_model(str(spec.folder / keras_file), compile=False)

        def run():
            return np.asarray(net(batch, training=False))

    else:
        raise ValueError(runtime)
    reference = run()  # warm-up (graph optimisation, allocation)
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = run()
        seconds.append(time.perf_counter() - t)
    labels = np.argmax(out, axis=-1)
    profile = operator_profile(onnx_path, batch, threads) if runtime == "onnxruntime" else {}
    return {
        "operator_share": profile,
        "seconds": seconds,
        "shape": list(batch.shape),
        "labels": labels.ravel()[:: max(1, labels.size // 200000)].tolist(),
        "max_abs_diff_warmup": float(np.abs(out - reference).max()),
    }


def operator_profile(onnx_path: Path, batch, threads: int, runs: int = 3) -> dict:
    """Share of ONNX Runtime kernel time per operator type (where the time goes)."""
    import collections

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs):
            session.run(None, {name: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values()) or 1
    return {op: round(100 * t / whole, 1) for op, t in totals.most_common()}


def child_peak_gflops(threads: int) -> dict:
    """Best float32 matrix-multiply rate on ``threads`` threads: the machine's practical peak."""
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(threads)
    import numpy as np

    n = 3072
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return {"gflops": best}


# --------------------------------------------------------------------------- parent


def count_flops(onnx_path: Path, shape: list[int]) -> float:
    """Multiply-adds x 2 of all (transposed) convolutions for an input of ``shape``.

    Exported graphs do not always carry static shapes through every operator, so the true
    tensor shapes come from one run with every convolution's input and output exposed.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    exposed = {name for n in convs for name in (n.input[0], n.output[0])}
    known = {o.name for o in model.graph.output}
    for name in sorted(exposed - known):
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {session.get_inputs()[0].name: np.zeros(shape, np.float32)}
    shapes = dict(zip(names, (v.shape for v in session.run(names, feed))))
    flops = 0.0
    for node in convs:
        kernel = weights.get(node.input[1])
        if kernel is None:
            continue
        if node.op_type == "Conv":  # weight (Cout, Cin/g, k...): cost per output element
            flops += 2.0 * np.prod(shapes[node.output[0]]) * np.prod(kernel[1:])
        else:  # weight (Cin, Cout/g, k...): cost per input element
            flops += 2.0 * np.prod(shapes[node.input[0]]) * np.prod(kernel[1:])
    return float(flops)


def run_child(args: list[str]) -> tuple[dict, float, float]:
    """Run ``--child ...`` in a fresh interpreter: (its JSON, wall seconds, peak RSS in MB)."""
    command = [sys.executable, __file__, "--child", *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()  # read to EOF first: a full pipe would block the child
    process.stdout.close()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"benchmark step {args[0]} failed (exit {process.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    return result, wall, usage.ru_maxrss / 1024.0  # ru_maxrss is in kB on Linux


def summary(values: list[float]) -> str:
    median = statistics.median(values)
    spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
    return f"{median:7.2f} s ± {spread:5.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="BraTS-format case folder")
    parser.add_argument("--model", default=None, help="model package (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    parser.add_argument(
        "--skip-seed", action="store_true", help="leave out the (slow) seed pipeline"
    )
    parser.add_argument("--runtimes", default="tensorflow,onnxruntime,openvino")
    parser.add_argument("--json", type=Path, default=None, help="also save all figures here")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "seed":
            result = child_seed(Path(rest[0]))
        elif kind == "ours":
            result = child_ours(Path(rest[0]), rest[1] or None, rest[2:])
        elif kind == "infer":
            result = child_infer(
                Path(rest[0]), rest[1] or None, rest[2], int(rest[3]), int(rest[4])
            )
        elif kind == "gflops":
            result = child_peak_gflops(int(rest[0]))
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(result))
        return 0

    from BrainTumorSegLib.model import resolve_model

    spec = resolve_model(args.model)
    model_arg = str(spec.folder) if args.model else ""
    figures: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
        },
        "case": str(args.case),
        "model": f"{spec.name} {spec.version}",
        # "inference alone" times one pass of the first network; end to end runs them all.
        "networks": len(spec.network_paths),
    }
    rows = []

    def measure(label: str, child: list[str], key=lambda r: r["timings"]["total"]) -> dict:
        walls, peaks, results = [], [], []
        for n in range(args.repeats):
            print(f"  {label}: run {n + 1}/{args.repeats}", file=sys.stderr, flush=True)
            result, wall, peak = run_child(child)
            results.append(result)
            walls.append(key(result) if key else wall)
            peaks.append(peak)
        entry = {"seconds": walls, "peak_rss_mb": max(peaks), "runs": results}
        rows.append((label, summary(walls), f"{max(peaks):7.0f} MB"))
        figures[label] = entry
        return entry

    print(
        f"Benchmark on {args.case.name}, model {figures['model']} "
        f"({figures['networks']} network(s)), {args.threads} threads",
        file=sys.stderr,
    )
    seed = (
        None if args.skip_seed else measure("seed pipeline (end to end)", ["seed", str(args.case)])
    )
    # As a user runs it: the model's defaults (the bundled model: 96^3 windows, one pass).
    ours = measure("ours, end to end", ["ours", str(args.case), model_arg])
    ours_one = measure(
        "ours, end to end, no mirroring (--no-tta)", ["ours", str(args.case), model_arg, "--no-tta"]
    )
    # The fastest setting: a model that runs in windows by default, on the whole volume.
    measure(
        "ours, end to end, one whole-volume pass (--no-tta --window whole)",
        ["ours", str(args.case), model_arg, "--no-tta", "--window", "whole"],
    )
    # The other N4 setting than the model's: what N4 costs (or what skipping it saves).
    other_n4 = "off" if spec.bias_correction else "on"
    ours_n4 = measure(
        f"ours, end to end, N4 {other_n4}",
        ["ours", str(args.case), model_arg, "--bias-correction", other_n4],
    )
    inference = {}
    for runtime in [r for r in args.runtimes.split(",") if r]:
        try:
            entry = measure(
                f"inference alone: {runtime}",
                ["infer", str(args.case), model_arg, runtime, str(args.repeats), str(args.threads)],
                key=lambda r: statistics.median(r["seconds"]),
            )
            inference[runtime] = entry
        except RuntimeError as e:
            print(f"  {runtime}: not measured ({e})", file=sys.stderr)

    gflops = max(run_child(["gflops", str(args.threads)])[0]["gflops"] for _ in range(2))
    shape = next(iter(inference.values()))["runs"][0]["shape"] if inference else None
    flops = count_flops(spec.folder / spec.file, shape) if shape else float("nan")
    lower_bound = flops / (gflops * 1e9)
    figures.update(
        {
            "peak_gflops": gflops,
            "model_gflop": flops / 1e9,
            "lower_bound_s": lower_bound,
            "input_shape": shape,
        }
    )

    print(
        f"\nMachine: {figures['machine']}\nCase: {args.case}\nModel: {figures['model']}, "
        f"{figures['networks']} network(s) (inference alone: one pass of the first)\n"
    )
    print("| measurement | median ± half-range | peak RSS |\n|---|---|---|")
    for label, seconds, peak in rows:
        print(f"| {label} | {seconds} | {peak} |")
    print(
        f"\nNetwork input {shape}: {flops / 1e9:.1f} GFLOP per pass; machine peak "
        f"{gflops:.1f} GFLOP/s (float32 matmul, {args.threads} threads) -> lower bound "
        f"{lower_bound:.2f} s"
    )
    ours_median = statistics.median(ours["seconds"])
    if seed:
        print(f"seed / ours end to end: {statistics.median(seed['seconds']) / ours_median:.1f}x")
    print(f"ours without mirroring: {statistics.median(ours_one['seconds']):.1f} s")
    print(f"ours with N4 {other_n4}: {statistics.median(ours_n4['seconds']):.1f} s")
    for runtime, entry in inference.items():
        ratio = statistics.median(entry["seconds"]) / lower_bound
        print(f"{runtime}: {ratio:.2f}x the compute lower bound")
        share = entry["runs"][0].get("operator_share")
        if share:
            top = ", ".join(f"{op} {pct:.0f} %" for op, pct in list(share.items())[:8])
            print(f"  {runtime} kernel time by operator: {top}")
    if len(inference) > 1:
        import numpy as np

        names = list(inference)
        base = np.array(inference[names[0]]["runs"][0]["labels"])
        for other in names[1:]:
            agree = np.mean(base == np.array(inference[other]["runs"][0]["labels"]))
            print(f"label agreement {names[0]} vs {other} (sampled voxels): {agree:.5f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
