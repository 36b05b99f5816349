"""bench report: BENCHMARKS.md sections rewritten between their markers from results files, plots written."""
from __future__ import annotations

import json

import pytest

from enet_serve.bench import report


def peers_results() -> dict:
    rows = []
    for target, rate in (("enet-serve", 45.0), ("fastapi", 30.0)):
        for n in (1, 16):
            rows.append({"target": target, "clients": n, "images_per_s": rate * (1 if n > 1 else 0.6),
                         "median_ms": 1000 * n / rate, "p99_ms": 2000 * n / rate, "errors": {}})
    limit = {"all_cores": {"1": {"images_per_s": 38.0, "median_ms": 26.0}},
             "side_by_side": {"images_per_s": 50.0, "median_ms": 40.0},
             "best": {"how": "2 single-thread sessions", "images_per_s": 50.0}}
    return {"benchmark": "peers", "clients": [1, 16], "duration_s": 15,
            "machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11", "avx512_vnni": True},
            "versions": {"onnxruntime": "1.0"}, "limit": {"fp32": limit, "fp32_end": limit}, "rows": rows,
            "skipped": {"ray": "no environment"}}


def test_sections_replace_only_their_markers(tmp_path):
    (tmp_path / "peers.json").write_text(json.dumps(peers_results()))
    (tmp_path / "memory.json").write_text(json.dumps({"rows": [
        {"variant": "default", "flags": [], "after_warmup_mib": 210.0, "overload_clients": 96,
         "overload_peak_mib": 300.0, "overload_images_per_s": 40.0}]}))
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nhand-written text\n\n<!-- bench:peers -->\nold table\n<!-- /bench:peers -->\n\ntail\n")
    written = report.build(tmp_path, out, plots=True)
    text = out.read_text()
    assert written == ["peers", "memory"]
    assert "old table" not in text and "hand-written text" in text and text.rstrip().endswith("<!-- /bench:memory -->")
    assert text.count("<!-- bench:peers -->") == 1 and "tail" in text
    assert "| enet-serve | 16 | 45.0 | 0.90 |" in text  # x limit: 45 / 50
    assert "| fastapi | 1.50x, 1.50x |" in text  # service / peer throughput, peer / service p99 at 16 clients
    assert "ray: no environment" in text and "| default | `(defaults)` | **210** | 300 | 40.0 |" in text
    assert (tmp_path / "clients.png").stat().st_size > 1000 and "![throughput and p99 against clients](clients.png)" in text
    first = out.read_text()
    assert report.build(tmp_path, out, plots=True) == written and out.read_text() == first  # idempotent


def test_article_section_puts_the_article_beside_this_cpu(tmp_path):
    pytest.importorskip("matplotlib")
    archs = [{"arch": a, "params": p, "gflops": g, "ms_per_image": {"1": ms}} for a, p, g, ms in (
        ("resnet18", 11_689_512, 3.6, 18.0), ("alexnet", 61_100_840, 1.4, 13.0), ("vgg16", 138_357_544, 30.9, 150.0),
        ("squeezenet1_0", 1_248_424, 1.6, 11.0), ("mobilenet_v1", 4_231_976, 1.1, 5.9))]
    (tmp_path / "architectures.json").write_text(json.dumps(archs))
    out = tmp_path / "B.md"
    report.build(tmp_path, out)
    text = out.read_text()
    assert "| mobilenet_v1 | 4,231,976 | 1.10 | 33.251 | 5.9 | |" in text
    assert "does not hold on this CPU" in text and "faster than every other row" in text
    assert (tmp_path / "architectures.png").is_file()
