"""The report card renders from results files alone: embedded plots, no external URLs, no
crash on missing optional fields, honest verdict either way."""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdistill.report import render_report
from kdistill.report.render import ece_of, retention_of, verdict

SRC = Path(__file__).resolve().parents[2] / "src"
REPORT_SRC = SRC / "kdistill" / "report"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bins(shift: float) -> dict:
    """15 reliability bins, 40 predictions each, accuracy = confidence - shift."""
    conf = [(i + 0.5) / 15 for i in range(15)]
    return {
        "counts": [40] * 15,
        "conf_sums": [40 * c for c in conf],
        "correct_sums": [40 * max(0.0, c - shift) for c in conf],
    }


def _lm(ppl, params, agree, kl, tok_s, p50, p95, run_dir=None, shift=0.02) -> dict:
    r = {
        "perplexity": ppl,
        "nll": 2.83,
        "kl_to_teacher": kl,
        "top1_agreement": agree,
        "eval_tokens": 8160,
        "params": params,
        "size_bytes": params * 4 + 12_376,
        "forward_tokens_per_s": tok_s,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "latency_input_tokens": 256,
        "generate_tokens_per_s": 5.2,
        "ece": 0.03,
        "reliability": _bins(shift),
    }
    if run_dir is not None:
        r["run_dir"] = str(run_dir)
        r["train"] = {"train_seconds": 539.6, "global_step": 60, "train_loss": 3.93}
    return r


def _write_log(d: Path, hard_only: bool) -> Path:
    d.mkdir(parents=True)
    rows = [
        {
            "step": s,
            "loss": 10.3 * 0.9 ** (s / 5),
            "soft_loss": 0.0 if hard_only else 7.4 * 0.88 ** (s / 5),
            "hard_loss": 10.3 * 0.9 ** (s / 5),
            "kd_temperature": 2.0 - s / 60,
            "soft_weight": 0.0 if hard_only else 0.7,
            "hard_weight": 1.0 if hard_only else 0.3,
            "beta": 0.5,
            "tokens_per_s": 131.9,
            "learning_rate": 4e-4,
        }
        for s in range(5, 65, 5)
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 65, "lo'  # killed mid-write
    (d / "kd_log.jsonl").write_text(text)
    return d


def _dump(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory) -> Path:
    """A demo-shaped results.json whose run_dirs are relative to another working directory
    (as the demo writes them), so the renderer must find the logs beside the results file."""
    out = tmp_path_factory.mktemp("demo") / "runs" / "demo"
    _write_log(out / "student", hard_only=False)
    _write_log(out / "baseline", hard_only=True)
    data = {
        "teacher": _lm(16.94, 134_515_008, 1.0, 0.0, 167.9, 0.659, 1.810, shift=0.01),
        "student": _lm(129.97, 67_253_184, 0.3134, 2.318, 407.9, 1.056, 1.215, "runs/demo/student"),
        "baseline": _lm(
            136.55, 67_253_184, 0.3021, 2.560, 396.1, 3.520, 3.550, "runs/demo/baseline"
        ),
        "derived": {
            "student_ppl_retention": 16.94 / 129.97,
            "baseline_ppl_retention": 16.94 / 136.55,
            "student_vs_baseline_ppl_ratio": 129.97 / 136.55,
            "student_size_fraction": 0.49997,
            "student_speedup": 407.9 / 167.9,
            "teacher_helped": True,
        },
        "timings": {"distill_seconds": 568.1, "eval_seconds": 179.3, "total_seconds": 994.0},
    }
    return _dump(out / "results.json", data)


def _img_srcs(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', page)


@pytest.fixture(scope="module")
def demo_report(demo_results) -> tuple[Path, Path]:
    return render_report([demo_results], demo_results.parent.parent / "out")


def test_html_is_self_contained_with_every_plot(demo_report):
    html_path, md_path = demo_report
    out = html_path.parent
    page = html_path.read_text()
    srcs = _img_srcs(page)
    assert len(srcs) == 5  # retention, size/quality, training, schedules, reliability
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert page.count("<img") == len(srcs)
    for bad in ("http://", "https://", "//cdn", "<link", "<script", "@import", "url("):
        assert bad not in page, bad
    for value in ("134.5", "538.1", "16.94", "129.97", "136.55", "2.318", "31.3%", "0.030"):
        assert value in page, value
    assert "408" in page and "1056 / 1215" in page  # tokens/s and latency p50 / p95 in ms
    assert (
        "The student keeps 13.0% of the teacher's quality (perplexity) at 50% of its size and "
        "runs 2.43 times faster; the teacher improved the student by 4.8% over the same-size "
        "baseline (perplexity 129.97 vs 136.55)."
    ) in page
    assert "Merged from" not in page  # one results file: the speed-comparability note
    md = md_path.read_text()
    row = "| student | student | 67.3 | 269.0 | 129.97 | - | 2.318 | 31.3% | - | 0.030 | 408 |"
    assert row + " 1056 / 1215 |" in md  # a results file from before bits per byte: "-"
    assert "improved the student by 4.8%" in md
    for stem in ("retention", "size_quality", "training", "schedules", "reliability"):
        assert f"(plots/{stem}.png)" in md
        assert (out / "plots" / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
    assert not list(out.rglob("*.tmp"))  # atomic writes left no temp file


def test_explicit_logs_dirs_and_no_logs(demo_results, tmp_path):
    demo = demo_results.parent
    page = render_report([demo_results], tmp_path / "a", [demo / "student"])[0].read_text()
    assert len(_img_srcs(page)) == 5
    page = render_report([demo_results], tmp_path / "b", [tmp_path / "nowhere"])[0].read_text()
    assert len(_img_srcs(page)) == 3 and "Training curves" not in page


def test_minimal_results_render(tmp_path):
    p = _dump(
        tmp_path / "r.json", {"teacher": {"perplexity": 10.0}, "student": {"perplexity": 20.0}}
    )
    html_path, md_path = render_report([p], tmp_path / "o")
    page = html_path.read_text()
    assert len(_img_srcs(page)) == 1  # retention only: no params, logs or reliability bins
    assert "keeps 50.0% of the teacher" in page and "effect is unknown" in page
    assert "| student | - | - | 20.00 | - | - | - | - | - |" in md_path.read_text()


def test_partial_fields_and_nan_do_not_crash(tmp_path):
    data = {
        "teacher": {"perplexity": 12.0, "params": 1e8, "latency_p50_s": 0.5, "size_bytes": None},
        "student": {"perplexity": float("nan"), "params": 5e7, "run_dir": "/no/such/dir"},
        "baseline": {"perplexity": 30.0, "params": 5e7, "reliability": {"counts": [0] * 15}},
        "timings": {"total_seconds": "n/a"},
    }
    page = render_report([_dump(tmp_path / "r.json", data)], tmp_path / "o")[0].read_text()
    assert "500 / -" in page  # p50 without p95
    assert "has no perplexity to compare" in page and "50% of its size" in page


def test_teacher_did_not_help_is_said_plainly():
    models = {
        "teacher": {"perplexity": 10.0, "params": 100, "forward_tokens_per_s": 400.0},
        "student": {"perplexity": 16.0, "params": 25, "forward_tokens_per_s": 320.0},
        "baseline": {"perplexity": 15.0, "params": 25},
    }
    text = verdict(models, lm=True)
    assert text.startswith("The student keeps 62.5% of the teacher's quality (perplexity)")
    assert "25% of its size and runs 1.25 times slower" in text
    assert (
        "the teacher did NOT help" in text and "better by 6.7% (perplexity 16.00 vs 15.00)" in text
    )
    assert "improved" not in text
    models["baseline"]["perplexity"] = 16.001
    assert "NOT help: no measurable difference" in verdict(models, lm=True)


def test_classifier_results_render(tmp_path):
    data = {
        "teacher": {
            "accuracy": 0.912,
            "params": 421_642,
            "per_class_accuracy": [0.86, 0.98, 0.85, 0.91, 0.86, 0.98, 0.74, 0.97, 0.98, 0.96],
            "ece": 0.021,
            "examples_per_s": 41_200.0,
            "peak_memory_bytes": 2_000_000,
            "top1_agreement": 1.0,
            "kl_to_teacher": 0.0,
        },
        "student": {
            "accuracy": 0.874,
            "params": 52_138,
            "per_class_accuracy": {str(c): 0.87 for c in range(10)},
            "reliability": _bins(0.05),  # no "ece": computed from the bins
            "examples_per_s": 163_000.0,
            "peak_memory_bytes": 500_000,
            "latency_p50_s": 0.00042,
            "latency_p95_s": 0.00131,
            "top1_agreement": 0.905,
            "kl_to_teacher": 0.188,
        },
        "baseline": {"accuracy": 0.861, "params": 52_138, "examples_per_s": 165_000.0},
        "train_seconds": 41.5,
    }
    html_path, md_path = render_report([_dump(tmp_path / "r.json", data)], tmp_path / "o")
    page = html_path.read_text()
    assert "examples/s" in page and "91.2%" in page and "87.4%" in page and "0.188" in page
    assert "Per-class accuracy" in page and "Reliability diagrams" in page
    assert "keeps 95.8% of the teacher's quality (accuracy) at 12% of its size" in page
    assert "times faster, with 25% of its peak memory" in page
    assert "improved the student by 1.3 percentage points" in page
    assert "(accuracy 87.4% vs 86.1%)" in page
    assert (
        "| student | 0.052 | - | 87.4% | 0.188 | 90.5% | 0.049 | 163000 | 0.42 / 1.31 | 0.5 |"
        in md_path.read_text()
    )


def test_several_results_files_are_merged_without_overwriting(demo_results, tmp_path):
    other = _lm(16.99, 134_515_008, 1.0, 0.0, 98.0, 1.1, 2.0)
    teacher_run = _dump(tmp_path / "teacher_run" / "results.json", {"teacher": other})
    no_logs = [tmp_path / "nowhere"]
    page = render_report([demo_results, teacher_run], tmp_path / "o", no_logs)[0].read_text()
    assert "<td>teacher (teacher_run)</td>" in page and "16.99" in page
    assert "Merged from 2 results files" in page
    assert "keeps 13.0%" in page  # the verdict still uses the demo's own teacher


def test_retention_prefers_derived_and_ece_from_bins():
    models = {"teacher": {"perplexity": 10.0}, "student": {"perplexity": 20.0}}
    assert retention_of(models, lm=True) == {"student": 0.5}
    assert retention_of(models, True, {"student_ppl_retention": 0.49}) == {"student": 0.49}
    gaps = [min(0.05, (i + 0.5) / 15) for i in range(15)]  # accuracy clamped at 0 in bin 0
    assert ece_of({"reliability": _bins(0.05)}) == pytest.approx(sum(gaps) / 15)
    assert ece_of({"ece": 0.1, "reliability": _bins(0.05)}) == 0.1
    assert ece_of({}) is None


def test_report_imports_no_model_code_at_runtime():
    """kdistill/__init__.py imports torch, so `import kdistill.report` in a fresh interpreter
    loads torch whatever the report does, and a plain sys.modules check could never fail.
    Instead: a stub ``kdistill`` package (same __path__, its __init__ not run) and an import
    hook that raises on torch/transformers, then the report is imported. Any import of model
    code by the report, direct or transitive, even one wrapped in try/except, now fails or shows
    in sys.modules. The control at the end proves the check can fail: kdistill.eval.metrics,
    imported the same way, trips the hook."""
    code = f"""
import sys, types
class Block:
    hits = []
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            Block.hits.append(name)
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
pkg = types.ModuleType("kdistill"); pkg.__path__ = [{str(SRC / "kdistill")!r}]
sys.modules["kdistill"] = pkg
import kdistill.report, kdistill.report.render, kdistill.report.plots
assert not Block.hits, Block.hits
try:
    import kdistill.eval.metrics
except ImportError:
    pass
assert Block.hits == ["torch"], "control: the check does not see a torch import"
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_report_source_imports_only_stdlib_and_matplotlib():
    """Static twin of the runtime check: also catches an import hidden inside a function that
    the runtime import would not execute. The import-linter contract enforces it in CI too."""
    allowed = {"__future__", "base64", "html", "io", "json", "math", "os", "pathlib", "matplotlib"}
    for path in REPORT_SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                # kdistill.errors, kdistill.files and kdistill.eval.roles are stdlib-only (the
                # error class, the atomic writer, the evaluation's roles): import-linter keeps
                # the first two below every layer and eval.roles in the pure core
                ok = (
                    name.split(".")[0] in allowed
                    or name.startswith("kdistill.report")
                    or name in ("kdistill.errors", "kdistill.files", "kdistill.eval.roles")
                )
                assert ok, (path.name, name)


def test_per_class_uses_class_names_when_they_fit():
    from kdistill.report.render import _per_class

    r = {"per_class_accuracy": [0.5, 0.25], "class_names": ["Shirt", "Bag"]}
    assert _per_class(r) == {"Shirt": 0.5, "Bag": 0.25}
    r["class_names"] = ["Shirt"]  # wrong length: indices, not a mislabelled chart
    assert _per_class(r) == {"0": 0.5, "1": 0.25}


def test_training_curves_get_a_panel_per_loss_term():
    from kdistill.report.plots import curve_panels, training_curves

    logs = {
        "student": [
            {"step": 1, "loss": 2.0, "soft_loss": 1.0, "hard_loss": 3.0, "hidden_loss": 0.5}
        ],
        "baseline": [{"step": 1, "loss": 3.0, "soft_loss": 0.0, "hard_loss": 3.0}],
    }
    panels = curve_panels(logs)
    assert list(panels) == ["loss", "soft_loss", "hard_loss", "hidden_loss"]
    assert panels["hidden_loss"] == "hidden term"
    assert list(curve_panels({"b": logs["baseline"]})) == ["loss", "soft_loss", "hard_loss"]
    assert training_curves(logs).startswith(b"\x89PNG")


def test_the_demos_from_scratch_model_is_listed_as_a_baseline_beside_the_pair(tmp_path):
    """The demo's fourth model (same shape, fresh weights, no teacher) gets a row, the
    baseline role, and does not replace the named baseline in the verdict."""
    from kdistill.eval.derived import results_file
    from kdistill.eval.roles import build_setup

    results = {
        "teacher": _lm(16.94, 134_515_008, 1.0, 0.0, 530.0, 0.48, 0.5, shift=0.01),
        "student": _lm(35.85, 67_253_184, 0.49, 1.17, 1082.0, 0.24, 0.25),
        "baseline": _lm(39.61, 67_253_184, 0.44, 1.48, 1074.0, 0.24, 0.25),
        "scratch": _lm(1234.5, 67_253_184, 0.05, 4.9, 1079.0, 0.24, 0.25),
    }
    setup = build_setup(list(results), roles={"scratch": "baseline"})
    assert setup.pairs == [("student", "baseline")]
    payload = results_file(results, setup, lm=True)
    path = _dump(tmp_path / "demo" / "results.json", payload)
    html_path, md_path = render_report([path], tmp_path / "out", [])
    md = md_path.read_text()
    assert "| scratch | baseline | 67.3 |" in md and "1234.50" in md
    assert "improved the student by 9.5%" in md  # 35.85 vs the named baseline's 39.61
    assert "scratch" in html_path.read_text()
