"""The run report: headline numbers, validation, atomic writing and a self-contained, escaped HTML page."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from torchslim import report as rp


def _stage(name: str, size: int, latency: float, acc: float, runtime: str = "torch", **kw: object) -> dict:
    return {
        "name": name,
        "params": 431_080,
        "nonzero_params": 431_080 // max(1, 1_716_452 // size),
        "macs": 2_293_000,
        "size_bytes": size,
        "latency_ms": latency,
        "runtime": runtime,
        "accuracy": acc,
        **kw,
    }


def _stages(final_runtime: str = "torch") -> list[dict]:
    return [
        _stage("baseline", 1_716_452, 0.80, 0.9861),
        _stage("prune", 400_000, 0.50, 0.9750, seconds=3.2),
        _stage("quantize", 200_000, 0.25, 0.9833, final_runtime, note="static int8"),
    ]


def _layers() -> list[dict]:
    return [
        {
            "name": "conv1",
            "type": "Conv2d",
            "shape": [20, 1, 5, 5],
            "params": 520,
            "nonzero": 300,
            "sparsity": 0.4231,
            "macs": 288_000,
            "bits": 8,
        },
        {
            "name": "fc1",
            "type": "Linear",
            "shape": [500, 800],
            "params": 400_500,
            "nonzero": 40_050,
            "sparsity": 0.9,
            "macs": 400_000,
            "bits": 8,
        },
    ]


@pytest.fixture
def report() -> dict:
    sens = {"conv1": [[0.0, 0.98], [0.5, 0.97], [0.9, 0.6]], "fc1": [[0.0, 0.98], [0.9, 0.97]]}
    return rp.build_report(
        "lenet5-digits", "accuracy", _stages(), _layers(), recipe={"stages": []}, sensitivity=sens
    )


def test_headline_numbers_come_from_first_and_last_stage(report: dict) -> None:
    assert report["compression_ratio"] == pytest.approx(1_716_452 / 200_000, abs=1e-4)
    assert report["speedup"] == pytest.approx(0.80 / 0.25, abs=1e-4)
    assert report["accuracy_delta"] == pytest.approx(0.9833 - 0.9861, abs=1e-6)
    assert report["speedup_comparable"] is True
    assert report["torchslim_version"] and report["created"].endswith("+00:00")
    assert report["stages"][1]["seconds"] == 3.2  # extra stage keys kept
    assert report["recipe"] == {"stages": []} and "conv1" in report["sensitivity"]


def test_build_does_not_alias_the_callers_stages() -> None:
    stages = _stages()
    out = rp.build_report("t", "accuracy", stages)
    out["stages"][0]["name"] = "changed"
    assert stages[0]["name"] == "baseline"
    assert "layers" not in out


@pytest.mark.parametrize("field", rp.STAGE_FIELDS)
def test_a_stage_missing_a_field_is_rejected_by_name(field: str) -> None:
    stages = _stages()
    del stages[1][field]
    with pytest.raises(ValueError, match=rf"stages\[1\]: missing field '{field}'"):
        rp.build_report("t", "accuracy", stages)


def test_validate_names_the_first_bad_field(report: dict) -> None:
    bad = json.loads(json.dumps(report))
    del bad["stages"][2]["macs"]
    with pytest.raises(ValueError, match=r"report\.stages\[2\]: missing field 'macs'"):
        rp.validate_report(bad)
    bad["stages"][2]["macs"] = 1
    bad["stages"][0]["size_bytes"] = 0
    with pytest.raises(ValueError, match=r"report\.stages\[0\]\.size_bytes"):
        rp.validate_report(bad)
    del bad["speedup"]
    with pytest.raises(ValueError, match="missing field 'speedup'"):
        rp.validate_report(bad)
    layers_bad = dict(report, layers=[dict(_layers()[0], sparsity=1.5)])
    with pytest.raises(ValueError, match=r"report\.layers\[0\]\.sparsity"):
        rp.validate_report(layers_bad)
    with pytest.raises(ValueError, match="sensitivity"):
        rp.validate_report(dict(report, sensitivity={"conv1": [[0.1]]}))


def test_bad_stage_types_and_key_clashes_are_rejected() -> None:
    stages = _stages()
    stages[0]["params"] = 1.5
    with pytest.raises(ValueError, match=r"stages\[0\]\.params: expected an int"):
        rp.build_report("t", "accuracy", stages)
    with pytest.raises(ValueError, match="non-empty list"):
        rp.build_report("t", "accuracy", [])
    with pytest.raises(ValueError, match="'speedup'"):
        rp.build_report("t", "accuracy", _stages(), speedup=9.0)


def test_written_json_round_trips_with_every_design_field(report: dict, tmp_path: Path) -> None:
    json_path, html_path = rp.write_report(report, tmp_path / "out")
    assert (json_path.name, html_path.name) == ("report.json", "report.html")
    loaded = json.loads(json_path.read_text())
    assert loaded == json.loads(json.dumps(report))
    for field in ("task", "metric", "stages", "compression_ratio", "speedup"):
        assert field in loaded
    for stage in loaded["stages"]:
        assert set(rp.STAGE_FIELDS) <= set(stage)
    rp.validate_report(loaded)
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["report.html", "report.json"]


def test_html_is_self_contained_and_shows_every_section(report: dict) -> None:
    page = rp.render_html(report)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4 + 2 + 1  # stage charts, layer charts, sensitivity
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in images)
    for text in ("baseline", "prune", "quantize", "lenet5-digits", "1.64 MiB", "2.29 M", "fc1", "500×800"):
        assert text in page
    assert "static int8" in page and "3.2" in page  # extra stage keys shown
    assert "8.58×" in page and "3.20×" in page and "0.9861 → 0.9833" in page
    assert "not comparable" not in page


def test_html_escapes_hostile_text() -> None:
    stages = _stages()
    stages[1]["name"] = "<script>alert(1)</script>"
    layers = [dict(_layers()[0], name='conv"><img src=x onerror=alert(1)>')]
    page = rp.render_html(rp.build_report("<b>task</b>", "acc$uracy", stages, layers))
    assert "<script>" not in page and "<b>task" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;task&lt;/b&gt;" in page


def test_speedup_across_runtimes_is_flagged(tmp_path: Path) -> None:
    report = rp.build_report("t", "cosine", _stages(final_runtime="onnxruntime"))
    assert report["speedup_comparable"] is False
    page = rp.render_html(report)
    assert "Speedup is not comparable" in page and "onnxruntime" in page
    assert rp.build_report("t", "cosine", _stages())["speedup_comparable"] is True


def test_optional_sections_may_be_absent() -> None:
    minimal = {
        "task": "t",
        "metric": "cosine",
        "stages": [_stage("only", 1000, 1.0, 1.0)],
        "compression_ratio": 1.0,
        "speedup": 1.0,
    }
    rp.validate_report(minimal)
    page = rp.render_html(minimal)
    assert "Layers of the final model" not in page and "Sensitivity" not in page
    assert "only" in page and page.count("<img ") == 4


def test_failed_write_leaves_no_partial_files(report: dict, tmp_path: Path, monkeypatch) -> None:
    def boom(_report: dict) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(rp, "render_html", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        rp.write_report(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failure_during_replace_cleans_its_temp_file(report: dict, tmp_path: Path, monkeypatch) -> None:
    def fail_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rp.os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        rp.write_report(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_invalid_report_is_not_written(report: dict, tmp_path: Path) -> None:
    del report["stages"][0]["runtime"]
    with pytest.raises(ValueError, match="runtime"):
        rp.write_report(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rendering_leaves_no_open_pyplot_figures(report: dict) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    rp.render_html(report)
    assert plt.get_fignums() == before


@pytest.mark.parametrize(
    ("n", "text"), [(512, "512 B"), (1_716_452, "1.64 MiB"), (3 * 1024**3, "3.00 GiB"), (2048, "2.00 KiB")]
)
def test_fmt_bytes(n: int, text: str) -> None:
    assert rp.fmt_bytes(n) == text


def test_fmt_count() -> None:
    assert [rp.fmt_count(n) for n in (999, 2_293_000, 431_080, 3e9)] == [
        "999",
        "2.29 M",
        "431.08 k",
        "3.00 G",
    ]


def test_negative_metric_numpy_extras_and_empty_layers_still_render(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    stages = [_stage("baseline", 1000, 1.0, 0.5), _stage("final", 500, 0.5, -0.2)]
    report = rp.build_report("t", "cosine", stages, [], seed=np.int64(3), where=tmp_path)
    json_path, html_path = rp.write_report(report, tmp_path)
    loaded = json.loads(json_path.read_text())
    assert loaded["seed"] == 3 and loaded["where"] == str(tmp_path)
    assert loaded["accuracy_delta"] == pytest.approx(-0.7)
    assert "No layer rows were recorded" in html_path.read_text()
