"""The report renders from results files alone: embedded plots, no external URLs."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from kdistill.report import render_report
from kdistill.report.render import verdict

REPORT_SRC = Path(__file__).resolve().parents[2] / "src/kdistill/report"


def _model(ppl, params, agree, kl, speed, run_dir=None, rel=True):
    r = {
        "perplexity": ppl,
        "nll": 1.0,
        "kl_to_teacher": kl,
        "top1_agreement": agree,
        "eval_tokens": 8000,
        "params": params,
        "size_bytes": params * 4,
        "forward_tokens_per_s": speed,
        "latency_p50_s": 0.3,
        "latency_p95_s": 0.31,
        "latency_input_tokens": 256,
        "ece": 0.05,
    }
    if rel:
        r["reliability"] = {
            "counts": [10] * 15,
            "conf_sums": [i + 0.5 for i in range(15)],
            "correct_sums": [i for i in range(15)],
        }
    if run_dir:
        r["run_dir"] = str(run_dir)
    return r


def _run_dir(tmp_path: Path, name: str, soft: bool) -> Path:
    d = tmp_path / name
    d.mkdir()
    rows = [
        {
            "step": s,
            "loss": 5 - s / 10,
            "soft_loss": (3 - s / 20) if soft else 0.0,
            "hard_loss": 6 - s / 10,
            "kd_temperature": 2.0 - s / 40,
            "soft_weight": 0.7,
            "hard_weight": 0.3 if soft else 1.0,
            "tokens_per_s": 150.0,
        }
        for s in range(5, 45, 5)
    ]
    (d / "kd_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture()
def lm_results(tmp_path) -> Path:
    data = {
        "teacher": _model(16.9, 134_515_008, 1.0, 0.0, 450),
        "student": _model(197.4, 67_264_128, 0.281, 2.71, 920, _run_dir(tmp_path, "s", True)),
        "baseline": _model(207.0, 67_264_128, 0.274, 2.91, 940, _run_dir(tmp_path, "b", False)),
        "derived": {"teacher_helped": True},
        "timings": {"total_seconds": 700.0},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return path


def test_html_is_self_contained_with_every_plot(lm_results, tmp_path):
    html_path, md_path = render_report([lm_results], tmp_path / "out")
    page = html_path.read_text()
    imgs = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(imgs) == 5  # retention, size/quality, training, schedules, reliability
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert "<link" not in page and "<script" not in page
    for value in ("16.90", "197.40", "207.00", "28.1%", "134.5"):
        assert value in page
    assert "teacher improved the student" in page
    md = md_path.read_text()
    assert "| student | 67.3 |" in md and "plots/training.png" in md


def test_minimal_results_render(tmp_path):
    data = {
        "teacher": {"perplexity": 10.0, "params": 100},
        "student": {"perplexity": 20.0, "params": 50},
    }
    p = tmp_path / "r.json"
    p.write_text(json.dumps(data))
    html_path, _ = render_report([p], tmp_path / "o")
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "keeps 50.0% of the teacher" in page


def test_classifier_results_render(tmp_path):
    data = {
        "teacher": {"accuracy": 0.9, "params": 400_000, "per_class_accuracy": [0.9] * 10},
        "student": {
            "accuracy": 0.85,
            "params": 100_000,
            "top1_agreement": 0.9,
            "kl_to_teacher": 0.2,
        },
        "baseline": {"accuracy": 0.86, "params": 100_000},
    }
    p = tmp_path / "r.json"
    p.write_text(json.dumps(data))
    page = render_report([p], tmp_path / "o")[0].read_text()
    assert "accuracy" in page and "did NOT improve" in page


def test_verdict_words():
    models = {
        "teacher": {"perplexity": 10.0, "params": 100, "forward_tokens_per_s": 100},
        "student": {"perplexity": 12.5, "params": 25, "forward_tokens_per_s": 300},
        "baseline": {"perplexity": 15.0, "params": 25},
    }
    text = verdict(models, lm=True)
    assert "keeps 80.0%" in text and "25% of its size" in text and "3.00 times faster" in text
    assert "12.50 vs 15.00" in text


def test_report_modules_import_no_model_code():
    """Static check (kdistill/__init__ itself imports torch, so a runtime sys.modules check
    could not fail): every import in kdistill/report is stdlib, matplotlib or kdistill.report.
    The import-linter contract in pyproject enforces the same transitively in CI."""
    allowed = {"base64", "html", "io", "json", "os", "pathlib", "matplotlib", "__future__"}
    for path in REPORT_SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                assert top in allowed or n.startswith("kdistill.report"), (path.name, n)
