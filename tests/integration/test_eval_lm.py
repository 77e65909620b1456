"""The LM evaluation runner on tiny models."""

from __future__ import annotations

import math

import pytest

from kdistill.data.lm import CausalCollator, build_lm_datasets
from kdistill.eval.lm_runner import evaluate_lms
from tests.conftest import make_tiny_lm

pytestmark = pytest.mark.integration


def test_teacher_vs_itself_and_a_different_model(tiny_tokenizer, tiny_text_file):
    _, held = build_lm_datasets(
        tiny_tokenizer, str(tiny_text_file), block_size=16, held_out_fraction=0.3
    )
    teacher = make_tiny_lm(tiny_tokenizer, seed=0)
    copy = make_tiny_lm(tiny_tokenizer, seed=0)
    other = make_tiny_lm(tiny_tokenizer, seed=1)
    res = evaluate_lms(
        {"teacher": teacher, "copy": copy, "other": other},
        "teacher",
        held,
        CausalCollator(tiny_tokenizer.pad_token_id),
        vocab_size=len(tiny_tokenizer),
        batch_size=2,
        speed_budget_s=0.0,
    )
    assert res["copy"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert res["copy"]["top1_agreement"] == 1.0
    assert res["copy"]["perplexity"] == pytest.approx(res["teacher"]["perplexity"], rel=1e-6)
    assert res["other"]["kl_to_teacher"] > 1e-4
    # an untrained tiny model sits near the uniform perplexity |V|
    assert 0.2 * len(tiny_tokenizer) < res["teacher"]["perplexity"] < 5 * len(tiny_tokenizer)
    r = res["other"]
    assert sum(r["reliability"]["counts"]) == r["eval_tokens"]
    assert 0.0 <= r["ece"] <= 1.0 and math.isfinite(r["generate_tokens_per_s"])
    assert r["params"] == res["teacher"]["params"]
    assert 0 <= r["weight_bytes"] - 4 * r["params"] < 1024  # fp32 + the rotary buffer
    assert r["peak_memory_bytes"] > r["weight_bytes"] and r["peak_forward_alloc_bytes"] > 0


def test_inspect_cli_writes_json_and_plot(tiny_teacher_dir, tmp_path, capsys):
    import json

    from kdistill.cli.main import main

    out = tmp_path / "insp"
    argv = [
        "inspect",
        "--model",
        str(tiny_teacher_dir),
        "--prompt",
        "And God said",
        "--temperatures",
        "0.5,1,4",
        "--sequences",
        "3",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    data = json.loads((out / "inspect.json").read_text())
    assert [r["temperature"] for r in data["soft_labels"]] == [0.5, 1.0, 4.0]
    for r in data["soft_labels"]:
        assert r["total_probability"] == pytest.approx(1.0, abs=1e-5)
    assert sum(s["share"] for s in data["sequences"]) == pytest.approx(1.0)
    assert (out / "soft_labels.png").stat().st_size > 1000
    assert main(["inspect", "--model", str(tiny_teacher_dir), "--temperatures", "0,1"]) == 2


def test_datacheck_cli_runs(tiny_teacher_dir, tiny_text_file, capsys):
    from kdistill.cli.main import main

    argv = [
        "datacheck",
        "--model",
        str(tiny_teacher_dir),
        "--distill-data",
        str(tiny_text_file),
        "--production-data",
        "pydoc",
        "--max-tokens",
        "256",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "perplexity_ratio" in out and "unigram_jsd_bits" in out


def test_eval_cli_writes_results_for_each_model(tiny_teacher_dir, tiny_text_file, tmp_path):
    import json

    from kdistill.cli.main import main

    out = tmp_path / "r" / "results.json"
    argv = [
        "eval",
        "--teacher",
        str(tiny_teacher_dir),
        "--model",
        f"copy={tiny_teacher_dir}",
        "--data",
        str(tiny_text_file),
        "--block-size",
        "16",
        "--held-out-fraction",
        "0.3",
        "--max-eval-tokens",
        "256",
        "--own-samples",
        "3",
        "--own-max-new-tokens",
        "6",
        "--own-prompt-tokens",
        "4",
        "--out",
        str(out),
        "--speed-budget",
        "1",
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    # the same model samples the same tokens (same seed): its own-sample figures are the
    # teacher's, with reverse KL 0 and greedy agreement 1
    for key in ("own_entropy", "own_distinct2", "own_length"):
        assert res["copy"][key] == pytest.approx(res["teacher"][key], rel=1e-6)
    assert res["copy"]["own_reverse_kl"] == pytest.approx(0.0, abs=1e-6)
    assert res["teacher"]["own_greedy_agreement"] == 1.0
    from kdistill.report import render_report

    md = render_report([out], tmp_path / "rep")[1].read_text()
    assert "On each model's own samples (prompts 3, max_new_tokens 6" in md
    assert "| teacher | 0.000 | 100.0% |" in md and "| copy | 0.000 |" in md
    assert res["copy"]["own_sample_settings"] == {
        "prompts": 3,
        "prompt_tokens": 4,
        "max_new_tokens": 6,
        "sampling_temperature": 1.0,
        "top_p": 1.0,
        "seed": 0,
    }
    assert set(res) == {"teacher", "copy", "derived", "setup"}
    assert res["setup"]["roles"] == {"teacher": "teacher", "copy": "variant"}
    assert res["copy"]["text_agreement"] == 1.0  # the same model continues the same way
    assert res["copy"]["bits_per_byte"] == pytest.approx(res["teacher"]["bits_per_byte"])
    assert res["copy"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert res["derived"]["copy_ppl_retention"] == pytest.approx(1.0, rel=1e-6)
    assert res["derived"]["copy_size_fraction"] == 1.0
    assert res["copy"]["perplexity_retention"] == pytest.approx(1.0, rel=1e-6)
    assert main(["eval", "--model", "broken"]) == 2
    # roles and pairs from the command line; a pair naming no model is refused up front
    out2 = tmp_path / "r2" / "results.json"
    argv2 = [*argv[:-4], "--model", f"base={tiny_teacher_dir}", "--out", str(out2)]
    argv2 += ["--speed-budget", "1", "--baseline", "copy=base"]
    assert main(argv2) == 0
    setup = json.loads(out2.read_text())["setup"]
    assert setup["roles"] == {"teacher": "teacher", "copy": "student", "base": "baseline"}
    assert setup["pairs"] == [["copy", "base"]]
    assert json.loads(out2.read_text())["derived"]["pairs"]["copy"]["teacher_helped"] is False
    out3 = tmp_path / "r3" / "results.json"
    bad = [*argv[:-4], "--out", str(out3), "--baseline", "copy=nope"]
    assert main(bad) == 2
    assert not out3.exists()
