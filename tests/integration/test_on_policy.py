"""On-policy distillation with tiny models: training on the student's own samples lowers the
teacher's reverse KL on them; sampling is seeded without touching the global RNG; a resumed
run samples the same tokens and ends with the same weights; a teacher that cannot score new
text is refused before any model loads."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from kdistill.cli.main import main
from kdistill.data.lm import CausalCollator, IndexedDataset, build_lm_datasets
from kdistill.eval.own_samples import own_sample_figures
from kdistill.models.sampling import sample_continuations
from kdistill.teachers.model import ModelTeacher
from kdistill.training.on_policy import OnPolicy
from kdistill.training.step import KDSchedules
from kdistill.training.trainer import KDTrainer
from tests.conftest import (
    distill_then_resume,
    make_tiny_lm,
    read_log,
    same_weights,
    tiny_overrides,
)

pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny_tokenizer):
    model = make_tiny_lm(tiny_tokenizer, seed=0)
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    kw = dict(max_new_tokens=6, pad_id=tiny_tokenizer.pad_token_id, eos_ids=())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sample_continuations(model, prompts, seed=1, **kw)[2]
    assert torch.equal(torch.get_rng_state(), state)
    b = sample_continuations(model, prompts, seed=1, **kw)[2]
    c = sample_continuations(model, prompts, seed=2, **kw)[2]
    assert a.shape == (2, 6) and torch.equal(a, b) and not torch.equal(a, c)
    assert model.training  # put back in the mode it was in


def test_on_policy_training_lowers_reverse_kl_on_the_students_own_samples(
    tiny_tokenizer, tiny_text_file, tmp_path
):
    tok = tiny_tokenizer
    teacher = make_tiny_lm(tok, seed=0)
    with torch.no_grad():  # a confident teacher, so that a random student is far from it
        teacher.model.norm.weight.mul_(8.0)
    student = make_tiny_lm(tok, layers=2, seed=1)
    train, held = build_lm_datasets(tok, str(tiny_text_file), block_size=16, held_out_fraction=0.2)
    prompts = [held[i]["input_ids"][:4] for i in range(6)]
    eos = (tok.eos_token_id,)

    def student_figures():
        figs = own_sample_figures(
            {"t": teacher, "s": student}, "t", prompts, vocab_size=len(tok),
            pad_id=tok.pad_token_id, eos_ids=eos, max_new_tokens=8, seed=3,
        )  # fmt: skip
        assert figs["t"]["own_reverse_kl"] == 0.0 and figs["t"]["own_greedy_agreement"] == 1.0
        return figs["s"]

    before = student_figures()
    args = TrainingArguments(
        output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", max_steps=30,
        learning_rate=0.01, per_device_train_batch_size=4, save_strategy="no",
        warmup_steps=0, lr_scheduler_type="constant", disable_tqdm=True,
        remove_unused_columns=False,
    )  # fmt: skip
    trainer = KDTrainer(
        model=student, args=args, train_dataset=IndexedDataset(train),
        data_collator=CausalCollator(tok.pad_token_id), teacher=ModelTeacher(teacher),
        schedules=KDSchedules.build(1.0, 1.0, 0.0), vocab_size=len(tok),
        on_policy=OnPolicy(max_new_tokens=8, prompt_tokens=4), pad_token_id=tok.pad_token_id,
        eos_token_ids=eos,
    )  # fmt: skip
    trainer.train()
    after = student_figures()
    # measured 0.56 -> 0.25 nats per token
    assert after["own_reverse_kl"] < 0.6 * before["own_reverse_kl"]
    assert after["own_length"] > 0 and after["own_entropy"] > 1.0  # not collapsed


def test_resume_samples_the_same_tokens_and_ends_with_the_same_weights(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    extra = {
        "distill.on_policy": "{fraction: 0.5, max_new_tokens: 6, prompt_tokens: 4}",
        "training.gradient_accumulation_steps": 2,
        "training.max_steps": 4,
        "training.save_steps": 2,
    }
    ref, run = distill_then_resume(tiny_teacher_dir, tiny_text_file, tmp_path, extra, kept=2)
    log = read_log(ref)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    shares = [r["on_policy_share"] for r in log]
    assert set(shares) <= {0.0, 0.5, 1.0} and 0 < sum(shares) < 4  # a mix of both kinds
    # the same run killed after checkpoint-2 resumes to the same weights, bit for bit
    assert same_weights(run, ref)
    again = read_log(run)
    keys = ("on_policy_share", "sample_length", "soft_loss")
    assert [{k: r[k] for k in keys} for r in again[2:]] == [
        {k: r[k] for k in keys} for r in log[2:]
    ]


def test_a_teacher_that_cannot_score_new_samples_is_refused(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    extra = {
        "teacher.kind": "store",
        "teacher.path": str(tmp_path / "store"),
        "distill.on_policy": "{fraction: 1.0}",
    }
    out = tmp_path / "run"
    assert (
        main(["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **extra)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert "distill.on_policy" in err[-1] and "teacher.kind=model" in err[-1]
    assert not out.exists()
    extra = {"distill.on_policy": "{prompt_tokens: 16}"}  # the whole 16-token block
    assert (
        main(["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **extra)])
        == 2
    )
    assert "prompt_tokens" in capsys.readouterr().err
    assert not out.exists()


def test_two_process_on_policy_run_each_rank_samples_its_own(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    """torchrun, 2 CPU processes: every micro-batch on-policy, each rank sampling from its
    own prompts with its own seed; the global count of sampled targets reaches the loss."""
    import os
    import subprocess
    import sys

    from tests.integration.test_training import DDP_SCRIPT, REPO

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "two"
    extra = {
        "distill.on_policy": "{fraction: 1.0, max_new_tokens: 4, prompt_tokens: 4}",
        "training.max_steps": 2,
        "training.save_steps": 2,
        "training.per_device_batch_size": 2,
    }
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = [torchrun, "--standalone", "--nproc_per_node", "2", str(script), DEMO]
    argv += tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **extra)
    proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (out / "kd_log.jsonl").read_text().splitlines()]
    assert [r["on_policy_share"] for r in log] == [1.0, 1.0]
    assert all(r["sample_length"] == 4.0 and r["soft_loss"] > 0 for r in log)
    blocks = json.loads((out / "train_summary.json").read_text())["train_blocks"]
    # a real 2-rank run: each rank's loader holds half the blocks, 2 rows a step
    per_rank_steps = math.ceil(math.ceil(blocks / 2) / 2)
    assert log[0]["epoch"] == pytest.approx(1 / per_rank_steps, rel=1e-3)
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("chunk", [None, 8])
def test_forward_kl_share_mixes_the_two_divergences_on_sampled_tokens(
    chunk, tiny_tokenizer, tmp_path
):
    from kdistill.models.sampling import sampled_batch

    tok = tiny_tokenizer
    teacher = make_tiny_lm(tok, seed=0)
    student = make_tiny_lm(tok, layers=2, seed=1)
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    p_ids, p_mask, new = sample_continuations(
        student, prompts, max_new_tokens=5, pad_id=tok.pad_token_id, eos_ids=(), seed=0
    )
    batch = sampled_batch(p_ids, p_mask, new, ())
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")

    def loss(divergence, share=0.0):
        trainer = KDTrainer(
            model=student, args=args, teacher=ModelTeacher(teacher), vocab_size=len(tok),
            schedules=KDSchedules.build(1.0, 1.0, 0.3), loss_chunk_size=chunk,
            on_policy=OnPolicy(divergence=divergence, forward_kl_share=share),
        )  # fmt: skip
        with torch.no_grad():
            return float(trainer.compute_loss(student, dict(batch)))

    rkl, fkl = loss("reverse_kl"), loss("forward_kl")
    assert rkl > 0 and fkl > 0 and rkl != pytest.approx(fkl)
    assert loss("reverse_kl", 0.25) == pytest.approx(0.75 * rkl + 0.25 * fkl, rel=1e-5)
    assert loss("reverse_kl", 1.0) == pytest.approx(fkl, rel=1e-5)
