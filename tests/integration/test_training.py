"""Training engine on tiny models: runs, resume bit-identical, GA invariance, NaN guards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdistill.cli.main import main
from kdistill.config.loader import load_config
from kdistill.pipeline.distill_lm import run_distill_lm
from kdistill.training.checkpoint import MARKER, latest_complete_checkpoint
from kdistill.training.trainer import KDTrainer
from tests.conftest import make_tiny_lm, tiny_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # progress bars redraw with \r: split on both so the error is its own line
    return [x for x in re.split(r"[\r\n]", err) if x.startswith("kdistill:")]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "kd_log.jsonl").read_text().splitlines()]


def test_distill_via_cli_writes_model_config_and_logs(tiny_teacher_dir, tiny_text_file, tmp_path):
    out = tmp_path / "run"
    argv = [
        "distill",
        str(REPO / "src/kdistill/configs/demo.yaml"),
        *tiny_overrides(tiny_teacher_dir, tiny_text_file, out),
    ]
    assert main(argv) == 0
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "config.yaml").is_file()
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    for key in (
        "loss",
        "soft_loss",
        "hard_loss",
        "kd_temperature",
        "soft_weight",
        "hard_weight",
        "tokens_per_s",
    ):
        assert key in log[0]
    assert log[0]["soft_loss"] > 0
    # the loss is the objective: 0.7 * T^2 * soft + 0.3 * hard (T = 1 in demo.yaml)
    expect = 0.7 * log[0]["soft_loss"] + 0.3 * log[0]["hard_loss"]
    assert log[0]["loss"] == pytest.approx(expect, rel=1e-4)
    assert log[-1]["loss"] < log[0]["loss"]
    saved = load_config(out / "config.yaml")
    assert saved.training.max_steps == 6


def test_baseline_switch_trains_without_teacher(tiny_teacher_dir, tiny_text_file, tmp_path):
    out = tmp_path / "base"
    cfg = load_config(
        REPO / "src/kdistill/configs/demo.yaml",
        tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **{"teacher.kind": "none"}),
    )
    run_distill_lm(cfg)
    log = _log(out)
    assert all(
        r["soft_loss"] == 0 and r["soft_weight"] == 0 and r["hard_weight"] == 1.0 for r in log
    )
    assert log[0]["loss"] == pytest.approx(log[0]["hard_loss"], rel=1e-5)


def test_resume_is_bit_identical(tiny_teacher_dir, tiny_text_file, tmp_path, monkeypatch):
    demo = REPO / "src/kdistill/configs/demo.yaml"
    full = tmp_path / "full"
    run_distill_lm(load_config(demo, tiny_overrides(tiny_teacher_dir, tiny_text_file, full)))

    cut = tmp_path / "cut"
    cfg = load_config(demo, tiny_overrides(tiny_teacher_dir, tiny_text_file, cut))
    original = KDTrainer.compute_loss

    def interrupted(self, *a, **k):
        if self.state.global_step >= 4:
            raise KeyboardInterrupt("simulated kill after checkpoint-3")
        return original(self, *a, **k)

    monkeypatch.setattr(KDTrainer, "compute_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_distill_lm(cfg)
    monkeypatch.setattr(KDTrainer, "compute_loss", original)
    ckpts = cut / "checkpoints"
    assert latest_complete_checkpoint(ckpts).name == "checkpoint-3"
    assert not (cut / "model").exists()
    # a half-written newer checkpoint (no marker) must never be picked
    (ckpts / "checkpoint-5").mkdir()
    (ckpts / "checkpoint-5" / "model.safetensors").write_bytes(b"garbage")
    assert latest_complete_checkpoint(ckpts).name == "checkpoint-3"

    run_distill_lm(cfg)  # same command again: resumes automatically
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    summary = json.loads((cut / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-3")


def test_checkpoint_marker_written(tiny_teacher_dir, tiny_text_file, tmp_path):
    out = tmp_path / "r"
    run_distill_lm(
        load_config(
            REPO / "src/kdistill/configs/demo.yaml",
            tiny_overrides(tiny_teacher_dir, tiny_text_file, out),
        )
    )
    for ck in (out / "checkpoints").glob("checkpoint-*"):
        assert (ck / MARKER).is_file()


def _sgd_overrides(teacher, data, out, **extra):
    return tiny_overrides(
        teacher,
        data,
        out,
        **{
            "training.max_steps": 1,
            "training.extra": "{optim: sgd}",
            "training.lr_scheduler": "constant",
            "training.max_grad_norm": 1.0e9,
            "training.learning_rate": 0.5,
            **extra,
        },
    )


def test_gradient_accumulation_matches_one_big_batch(tiny_teacher_dir, tiny_chat_file, tmp_path):
    """Chat records have uneven valid-token counts: GA must normalise by the global count."""
    demo = REPO / "src/kdistill/configs/demo.yaml"
    one = tmp_path / "one"
    run_distill_lm(
        load_config(
            demo,
            _sgd_overrides(
                tiny_teacher_dir,
                tiny_chat_file,
                one,
                **{"training.per_device_batch_size": 4, "data.block_size": 64},
            ),
        )
    )
    acc = tmp_path / "acc"
    run_distill_lm(
        load_config(
            demo,
            _sgd_overrides(
                tiny_teacher_dir,
                tiny_chat_file,
                acc,
                **{
                    "training.per_device_batch_size": 1,
                    "training.gradient_accumulation_steps": 4,
                    "data.block_size": 64,
                },
            ),
        )
    )
    a, b = _weights(one), _weights(acc)
    moved = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved < 1e-5
    assert _log(one)[0]["loss"] == pytest.approx(_log(acc)[0]["loss"], rel=1e-5)


def _nan_model_dir(tokenizer, folder: Path, where: str) -> Path:
    model = make_tiny_lm(tokenizer)
    with torch.no_grad():
        getattr(model.model.layers[0].mlp, where).weight.fill_(float("nan"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_nonfinite_teacher_stops_with_named_cause(tiny_tokenizer, tiny_text_file, tmp_path, capsys):
    bad = _nan_model_dir(tiny_tokenizer, tmp_path / "bad_teacher", "down_proj")
    argv = [
        "distill",
        str(REPO / "src/kdistill/configs/demo.yaml"),
        *tiny_overrides(
            bad, tiny_text_file, tmp_path / "o", **{"student.from_teacher": "{keep_layers: [1, 2]}"}
        ),
    ]
    assert main(argv) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "teacher outputs are non-finite" in err[0]
    assert not (tmp_path / "o" / "model").exists()


def test_nan_loss_stops_with_named_cause(
    tiny_teacher_dir, tiny_tokenizer, tiny_text_file, tmp_path, capsys
):
    bad = _nan_model_dir(tiny_tokenizer, tmp_path / "bad_student", "up_proj")
    argv = [
        "distill",
        str(REPO / "src/kdistill/configs/demo.yaml"),
        *tiny_overrides(tiny_teacher_dir, tiny_text_file, tmp_path / "o2"),
    ]
    argv += ["student.from_teacher=null", f"student.model={bad}"]
    assert main(argv) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "loss became nan" in err[0]


def test_rerun_of_finished_run_does_not_retrain(tiny_teacher_dir, tiny_text_file, tmp_path, capsys):
    out = tmp_path / "done"
    cfg = load_config(
        REPO / "src/kdistill/configs/demo.yaml",
        tiny_overrides(tiny_teacher_dir, tiny_text_file, out),
    )
    run_distill_lm(cfg)
    before = (out / "model" / "model.safetensors").stat().st_mtime_ns
    run_distill_lm(cfg)
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert "already complete" in capsys.readouterr().out


def test_changed_config_in_same_folder_is_refused(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    out = tmp_path / "x"
    demo = str(REPO / "src/kdistill/configs/demo.yaml")
    assert main(["distill", demo, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out)]) == 0
    saved = (out / "config.yaml").read_bytes()
    changed = tiny_overrides(
        tiny_teacher_dir, tiny_text_file, out, **{"distill.divergence": "reverse_kl"}
    )
    assert main(["distill", demo, *changed]) == 2
    err = capsys.readouterr().err
    assert "distill.divergence='forward_kl', not 'reverse_kl'" in err
    assert "--fresh" in err
    # a changeable setting on a finished run: nothing retrained, config.yaml untouched
    changed = tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **{"distill.soft_weight": 0.9})
    assert main(["distill", demo, *changed]) == 0
    assert "already complete" in capsys.readouterr().out
    assert (out / "config.yaml").read_bytes() == saved


DDP_SCRIPT = """
import sys
from kdistill.config.loader import load_config
from kdistill.pipeline.distill_lm import run_distill_lm
from kdistill.training.distributed import end_distributed
run_distill_lm(load_config(sys.argv[1], sys.argv[2:]))
end_distributed()
"""


def test_two_process_cpu_run_matches_one_process(tiny_teacher_dir, tiny_chat_file, tmp_path):
    """torchrun, 2 CPU processes (gloo), global batch 4 == 1 process with batch 4; with a
    narrower student and the hidden term's MSE projections, which live outside DDP's wrapper
    (their gradients are averaged across ranks by the trainer)."""
    demo = str(REPO / "src/kdistill/configs/demo.yaml")
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    common = {
        "training.max_steps": 3,
        "data.block_size": 64,
        "training.save_steps": 3,
        "student.from_teacher": "{keep_layers: [0, 3], hidden_size: 16}",
        "distill.terms": "[{name: hidden, loss: mse, weight: 100}]",
    }
    one = tmp_path / "one"
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(
        [
            sys.executable,
            str(script),
            demo,
            *_sgd_overrides(
                tiny_teacher_dir,
                tiny_chat_file,
                one,
                **common,
                **{"training.per_device_batch_size": 4},
            ),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))

    def run_two_ranks() -> subprocess.CompletedProcess:
        shutil.rmtree(two, ignore_errors=True)
        return subprocess.run(
            [
                torchrun,
                "--standalone",
                "--nproc_per_node",
                "2",
                str(script),
                demo,
                *_sgd_overrides(
                    tiny_teacher_dir,
                    tiny_chat_file,
                    two,
                    **common,
                    **{"training.per_device_batch_size": 2},
                ),
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    proc = run_two_ranks()
    if proc.returncode != 0 and "received by PID" in proc.stderr:
        # once in CI (before the ranks left through end_distributed) a rank died by SIGABRT
        # inside gloo with no Python error; not reproduced since (0 in 12 runs here). A rank
        # killed by a signal gets one more try (a real bug fails both) and the first failure
        # is shown as a warning in the test summary, never hidden
        first = proc.stderr
        warnings.warn(
            f"2-process run: a rank died by a signal; retrying\n{first[-2000:]}", stacklevel=1
        )
        proc = run_two_ranks()
        assert proc.returncode == 0, first[:3000] + "\n...\n" + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[:2000] + "\n...\n" + proc.stderr[-2000:]
    l1, l2 = _log(one), _log(two)
    assert len(l1) == len(l2) == 3
    for a, b in zip(l1, l2):
        assert a["epoch"] == b["epoch"]  # same global batch: a real 2-rank run, not two 1-rank
        for key in ("loss", "soft_loss", "hard_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    w1, w2 = _weights(one), _weights(two)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5
    p1, p2 = (
        load_file(str(d / "checkpoints/checkpoint-3/loss_terms.safetensors")) for d in (one, two)
    )
    assert p1 and sorted(p1) == sorted(p2)
    assert max((p1[k] - p2[k]).abs().max().item() for k in p1) < 1e-5


def test_chunked_and_full_logit_paths_agree(tiny_teacher_dir, tiny_text_file, tmp_path):
    demo = REPO / "src/kdistill/configs/demo.yaml"
    logs = {}
    for name, chunk in (("chunked", 8), ("full", "null")):
        out = tmp_path / name
        run_distill_lm(
            load_config(
                demo,
                tiny_overrides(
                    tiny_teacher_dir,
                    tiny_text_file,
                    out,
                    **{"training.loss_chunk_size": chunk, "training.max_steps": 2},
                ),
            )
        )
        logs[name] = _log(out)
    for a, b in zip(logs["chunked"], logs["full"]):
        for key in ("loss", "soft_loss", "hard_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_gradient_checkpointing_gives_the_same_training(
    tiny_teacher_dir, tiny_text_file, tmp_path, monkeypatch
):
    """Recomputing activations in backward is exact: the same losses and gradient norms; and
    it did recompute (the checkpoint function ran only in the checkpointed run)."""
    import transformers.modeling_utils as mu

    calls = []
    real = mu.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", counting)
    demo = REPO / "src/kdistill/configs/demo.yaml"
    logs, counts = {}, {}
    for name, on in (("plain", "false"), ("checkpointed", "true")):
        out = tmp_path / name
        over = {"training.gradient_checkpointing": on, "training.max_steps": 2}
        run_distill_lm(
            load_config(demo, tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **over))
        )
        logs[name], counts[name] = _log(out), len(calls)
        calls.clear()
    assert counts["plain"] == 0 and counts["checkpointed"] > 0
    assert len(logs["plain"]) == len(logs["checkpointed"]) >= 2
    for a, b in zip(logs["plain"], logs["checkpointed"], strict=True):
        for key in ("loss", "soft_loss", "hard_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_student_cut_from_a_model_named_on_its_own(tiny_teacher_dir, tiny_text_file, tmp_path):
    """No teacher at all (kind none, teacher.model null): the student is still cut from the
    model that student.from_teacher names."""
    out = tmp_path / "cut"
    extra = {
        "teacher.kind": "none",
        "teacher.model": "null",
        "student.from_teacher": f"{{model: {tiny_teacher_dir}, keep_layers: [0, 3]}}",
        "training.max_steps": 2,
    }
    demo = str(REPO / "src/kdistill/configs/demo.yaml")
    assert (
        main(["distill", demo, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **extra)])
        == 0
    )
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["kdistill_teacher_layers"] == [0, 3]


def test_a_run_saved_before_newer_settings_existed_still_resumes(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    """A config.yaml written by an older kdistill lacks the settings added since (device,
    data.subset/split, training.fsdp): their defaults are no change."""
    out = tmp_path / "x"
    demo = str(REPO / "src/kdistill/configs/demo.yaml")
    over = tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **{"training.max_steps": 1})
    assert main(["distill", demo, *over]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for section, key in [(None, "device"), ("data", "subset"), ("data", "split")]:
        (saved if section is None else saved[section]).pop(key)
    saved["training"].pop("fsdp")
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert main(["distill", demo, *over]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["distill", demo, *over, "training.fsdp.teacher=shard"]) == 2  # a real change
    assert "training.fsdp.teacher='replicate', not 'shard'" in capsys.readouterr().err
