"""Ensemble packages: several networks in one package, their outputs averaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_case
from tiny_model import build_tiny_onnx, build_tiny_package

from BrainTumorSegLib import segment
from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.infer import EnsembleBackend, load_backend, predict_volume
from BrainTumorSegLib.model import load_model_spec, resolve_model


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two single-network packages that differ only in their weights."""
    soft = build_tiny_package(tmp_path / "soft")
    sharp = build_tiny_package(tmp_path / "sharp")
    build_tiny_onnx(sharp / "model.onnx", sharpness=3.0)
    return soft, sharp


def test_ensemble_package_averages_its_networks(tmp_path: Path):
    from Training.ensemble import build_ensemble

    soft, sharp = _pair(tmp_path)
    spec = build_ensemble([soft, sharp], tmp_path / "both", version="9.9")
    assert spec.ensemble_files == ["model-2.onnx"] and spec.version == "9.9"
    loaded = load_model_spec(tmp_path / "both")
    backend = load_backend(loaded)
    assert isinstance(backend, EnsembleBackend) and len(backend.members) == 2
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(16, 16, 8, 4)).astype(np.float32) * 2
    outputs = [
        predict_volume(load_backend(load_model_spec(p)), volume, load_model_spec(p))
        for p in (soft, sharp)
    ]
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)  # the members really differ
    averaged = predict_volume(backend, volume, loaded)
    np.testing.assert_allclose(averaged, (outputs[0] + outputs[1]) / 2, atol=1e-5)
    members = json.loads((tmp_path / "both" / "model.json").read_text())["training"]["ensemble"]
    assert [m["file"] for m in members] == ["model.onnx", "model-2.onnx"]
    assert members[1]["source"] == str(sharp)


def test_segment_with_an_ensemble_reports_its_networks(tmp_path: Path):
    from Training.ensemble import build_ensemble

    build_ensemble(list(_pair(tmp_path)), tmp_path / "both")
    images = blob_case(tmp_path / "case")
    result = segment(images, tmp_path / "out", model=tmp_path / "both", overlay=False)
    assert result.report["model"]["networks"] == 2
    assert np.count_nonzero(result.classes) > 0
    # One network file chosen explicitly runs alone.
    single = resolve_model(tmp_path / "both" / "model-2.onnx")
    assert single.ensemble_files == [] and single.file == "model-2.onnx"


def test_ensemble_members_must_share_the_preprocessing(tmp_path: Path):
    from Training.ensemble import build_ensemble

    one = build_tiny_package(tmp_path / "one")
    other = build_tiny_package(tmp_path / "other", spacing_mm=[2.0, 2.0, 2.0])
    build_ensemble([one, build_tiny_package(tmp_path / "two")], tmp_path / "both")
    before = sorted(p.name for p in (tmp_path / "both").iterdir())
    with pytest.raises(InputError, match="spacing_mm") as caught:
        build_ensemble([one, other], tmp_path / "both")
    assert "other" in str(caught.value)
    # The refused build left the existing ensemble as it was.
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == before
    assert load_model_spec(tmp_path / "both").ensemble_files == ["model-2.onnx"]
    with pytest.raises(InputError, match="at least two"):
        build_ensemble([one], tmp_path / "both")


def test_missing_or_repeated_ensemble_files_are_refused(tmp_path: Path):
    from Training.ensemble import build_ensemble

    build_ensemble(list(_pair(tmp_path)), tmp_path / "both")
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "both", broken)
    (broken / "model-2.onnx").unlink()
    with pytest.raises(InputError, match="model-2.onnx") as caught:
        load_model_spec(broken)
    assert "model.json" in str(caught.value)
    meta = json.loads((tmp_path / "both" / "model.json").read_text())
    meta["ensemble_files"] = ["model.onnx"]
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="distinct"):
        load_model_spec(broken)


def test_a_failed_rebuild_leaves_the_package_and_defaults_are_the_ensembles_own(tmp_path: Path):
    from Training.ensemble import build_ensemble

    soft, sharp = _pair(tmp_path)
    # A member whose defaults were chosen for it alone: the ensemble does not inherit them.
    meta = json.loads((soft / "model.json").read_text())
    meta.update(
        min_component_ml=1.0,
        keep_largest_component=True,
        test_time_augmentation=True,
        inference_window=[16, 16, 16],
    )
    (soft / "model.json").write_text(json.dumps(meta))
    spec = build_ensemble([soft, sharp], tmp_path / "both")
    both = tmp_path / "both"
    assert spec.network_paths == [both / "model.onnx", both / "model-2.onnx"]
    assert (spec.min_component_ml, spec.keep_largest_component) == (0.0, False)
    assert spec.test_time_augmentation is False and spec.inference_window is None
    chosen = build_ensemble([soft, sharp], tmp_path / "windowed", window=24)
    assert load_model_spec(tmp_path / "windowed").inference_window == [24, 24, 24]
    assert chosen.inference_window == [24, 24, 24]
    before = (tmp_path / "both" / "model.json").read_text()
    with pytest.raises(InputError, match="evaluation summary not found"):
        build_ensemble([soft, sharp], tmp_path / "both", evaluation=tmp_path / "typo.json")
    assert (tmp_path / "both" / "model.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_ensemble_memory_estimate_counts_every_network(tmp_path: Path):
    from BrainTumorSegLib.infer import estimate_memory_bytes
    from Training.ensemble import build_ensemble

    build_ensemble(list(_pair(tmp_path)), tmp_path / "both")
    single = estimate_memory_bytes((64, 64, 64), load_model_spec(tmp_path / "soft"))
    double = estimate_memory_bytes((64, 64, 64), load_model_spec(tmp_path / "both"))
    assert double == pytest.approx(2 * single)


def test_ensemble_memory_estimate_counts_each_member_at_its_own_width(tmp_path: Path):
    from BrainTumorSegLib.infer import estimate_memory_bytes, network_widths
    from Training.ensemble import build_ensemble

    narrow, wide = _pair(tmp_path)
    meta = json.loads((wide / "model.json").read_text())
    (wide / "model.json").write_text(json.dumps({**meta, "training": {"base_filters": 32}}))
    build_ensemble([narrow, wide], tmp_path / "both")
    both = load_model_spec(tmp_path / "both")
    assert network_widths(both) == [network_widths(load_model_spec(narrow))[0], 32]
    alone = [estimate_memory_bytes((64, 64, 64), load_model_spec(p)) for p in (narrow, wide)]
    assert estimate_memory_bytes((64, 64, 64), both) == pytest.approx(sum(alone))
    # One member chosen to run alone is counted at its own width, not the first member's.
    assert network_widths(resolve_model(tmp_path / "both" / "model-2.onnx")) == [32]
    assert network_widths(resolve_model(tmp_path / "both" / "model.onnx")) == [
        network_widths(load_model_spec(narrow))[0]
    ]


def test_ensemble_files_must_be_a_list_of_names(tmp_path: Path):
    package = build_tiny_package(tmp_path / "one")
    meta = json.loads((package / "model.json").read_text())
    for bad in (None, "model-2.onnx", [2], ["../other.onnx"]):
        (package / "model.json").write_text(json.dumps({**meta, "ensemble_files": bad}))
        with pytest.raises(InputError, match="ensemble_files|distinct file names"):
            load_model_spec(package)
