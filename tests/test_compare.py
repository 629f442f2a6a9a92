import json
from pathlib import Path

import pytest

from torchslim import report as rp
from torchslim.cli import main
from torchslim.compare import pareto


def _stage(name: str, size: int, latency: float, metric: float) -> dict:
    return {
        "name": name,
        "params": 1000,
        "nonzero_params": size // 4,
        "macs": 5000,
        "size_bytes": size,
        "latency_ms": latency,
        "runtime": "torch",
        "accuracy": metric,
    }


def _run(path: Path, final: tuple[int, float, float], metric: str = "accuracy", higher: bool = True) -> Path:
    stages = [_stage("baseline", 4000, 1.0, 0.95), _stage("prune", *final)]
    rp.write_report(rp.build_report("blobs", metric, stages, higher_is_better=higher), path)
    return path


def test_pareto_front_both_directions() -> None:
    points = [(4.0, 0.95), (1.0, 0.90), (2.0, 0.85), (2.0, 0.96)]
    assert pareto(points, higher_is_better=True) == [
        1,
        3,
    ]  # (2, .85) is beaten by (1, .90); (4, .95) by (2, .96)
    assert pareto(points, higher_is_better=False) == [1, 2]  # an error: (1, .90) and (2, .85) are smallest


def test_compare_table_and_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path / "a", (1000, 0.5, 0.93))
    b = _run(tmp_path / "b", (2000, 0.7, 0.94))
    page = tmp_path / "cmp.html"
    assert main(["compare", str(a), str(b), "--out", str(page), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["stage"]) for r in result["rows"]] == [
        ("a", "baseline"),
        ("a", "final (prune)"),
        ("b", "baseline"),
        ("b", "final (prune)"),
    ]
    assert [r["compression_ratio"] for r in result["rows"]] == [1.0, 4.0, 1.0, 2.0]
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 2 and "against latency" in html
    assert "http" not in html.replace("https://", "")  # self-contained: nothing to fetch
    assert main(["compare", str(a), str(b), "--out", str(page)]) == 0
    out = capsys.readouterr().out
    assert "runs compared (accuracy)" in out and "baseline" in out and f"page: {page}" in out


def test_compare_refuses_mixed_metrics_and_missing_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _run(tmp_path / "a", (1000, 0.5, 0.93))
    b = _run(tmp_path / "b", (1000, 0.5, 0.2), metric="mse", higher=False)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "x.html")]) == 2
    assert "different metrics" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "none")]) == 2
    assert "no report.json" in capsys.readouterr().err
