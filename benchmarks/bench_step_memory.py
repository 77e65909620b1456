"""Whole-step peak memory (student + teacher + loss + optimizer) at 2,048 tokens per sequence:
kdistill's KDTrainer (chunked loss) against TRL's GKDTrainer at the same settings, each with
and without gradient checkpointing.

Same models for every contestant: the bundled SmolLM2-135M teacher (fp32) and a student cut
from it (every other layer and the last, 16 of 30: 85.0 M parameters); one conversation per
step whose assistant reply is KJV text filling 2,048 tokens with the chat template (the loss
on the reply's tokens only, as TRL's ChatML collator masks the prompt); forward KL at T = 1
(kdistill soft_weight 1 / hard 0; TRL's generalized JSD with beta = 0 is KL(teacher ||
student)); TRL with lmbda = 0 (no on-policy generation), AdamW, batch 1, fp32, CPU.

Memory: each contestant runs in a fresh subprocess. Step 1 runs (it creates AdamW's state);
then the resident-set high-water mark is reset (``echo 5 > /proc/self/clear_refs``) and step 2
runs: peak = VmHWM - VmRSS(before step 2), the memory the step needs on top of the loaded
models, weights' gradients and optimizer state. Also reported: the RSS before step 2 (models +
state), and the step's seconds (a single figure; load on the machine moves it).

  .venv/bin/python benchmarks/bench_step_memory.py [--tokens 2048]

Writes ``benchmarks/results/step_memory_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_kd_loss import _status

HERE = Path(__file__).resolve().parent
CONTESTANTS = ("kdistill", "kdistill+ckpt", "trl_gkd", "trl_gkd+ckpt")
PROMPT = "Continue the chapter."


def _conversation(tok, tokens: int) -> list[dict]:
    """One chat whose assistant reply is KJV text cut to fill ``tokens`` with the template."""
    from kdistill.data.kjv import kjv_chapters

    text, ids = "", []
    for chapter in kjv_chapters():
        text += chapter + "\n\n"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > tokens:
            break
    empty = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ""}]
    reply_budget = tokens - _chat_tokens(tok, empty)
    reply = tok.decode(ids[: max(reply_budget - 8, 16)])
    return [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": reply}]


def _chat_tokens(tok, chat: list[dict]) -> int:
    """Tokens of ``chat`` rendered by the tokenizer's template."""
    ids = tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    return len(ids)


class _PeakProbe:
    """A TrainerCallback that resets VmHWM before step 2 and reads it after."""

    def __init__(self):
        from transformers import TrainerCallback

        probe = self

        class Cb(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == 1:
                    probe.before = _status("VmRSS")
                    Path("/proc/self/clear_refs").write_text("5")
                    probe.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 2:
                    probe.seconds = time.perf_counter() - probe.t0
                    probe.peak = _status("VmHWM") - probe.before

        self.callback = Cb()
        self.before = self.peak = self.seconds = None


def _models():
    from kdistill.models.loading import load_causal_lm
    from kdistill.models.student import build_student_from_teacher

    teacher, tok = load_causal_lm("smollm2-135m", frozen=True)
    student = build_student_from_teacher(teacher, every=2, seed=0)
    student.train()
    return teacher, student, tok


def _child(contestant: str, tokens: int) -> dict:
    import torch

    torch.manual_seed(0)
    teacher, student, tok = _models()
    chat = _conversation(tok, tokens)
    ckpt = contestant.endswith("+ckpt")
    probe = _PeakProbe()
    with tempfile.TemporaryDirectory() as tmp:
        if contestant.startswith("kdistill"):
            n_tokens = _run_kdistill(teacher, student, tok, chat, tokens, ckpt, probe, tmp)
        else:
            n_tokens = _run_trl(teacher, student, tok, chat, tokens, ckpt, probe, tmp)
    return {
        "contestant": contestant,
        "gradient_checkpointing": ckpt,
        "sequence_tokens": n_tokens,
        "peak_step_bytes": probe.peak,
        "peak_step_mib": round(probe.peak / 2**20, 1),
        "rss_before_step_mib": round(probe.before / 2**20, 1),
        "step_seconds": round(probe.seconds, 2),
        "student_params": sum(p.numel() for p in student.parameters()),
    }


def _run_kdistill(teacher, student, tok, chat, tokens, ckpt, probe, tmp) -> int:
    from transformers import TrainingArguments

    from kdistill.data.lm import CausalCollator, IndexedDataset, build_lm_datasets
    from kdistill.teachers.model import ModelTeacher
    from kdistill.training.step import KDSchedules
    from kdistill.training.trainer import KDTrainer

    data = Path(tmp) / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": chat}) for _ in range(4)))
    train, _ = build_lm_datasets(tok, str(data), block_size=tokens, held_out_fraction=0.2)
    args = TrainingArguments(
        output_dir=str(Path(tmp) / "o"),
        max_steps=2,
        per_device_train_batch_size=1,
        learning_rate=1e-5,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        gradient_checkpointing=ckpt,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = KDTrainer(
        model=student,
        args=args,
        train_dataset=IndexedDataset(train),
        data_collator=CausalCollator(tok.pad_token_id),
        teacher=ModelTeacher(teacher),
        schedules=KDSchedules.build(1.0, 1.0, 0.0),
        loss_chunk_size=128,
        callbacks=[probe.callback],
    )
    trainer.train()
    return int(train[0]["input_ids"].shape[-1])


def _run_trl(teacher, student, tok, chat, tokens, ckpt, probe, tmp) -> int:
    from datasets import Dataset

    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:  # older TRL layouts
        from trl import GKDConfig, GKDTrainer

    args = GKDConfig(
        output_dir=str(Path(tmp) / "o"),
        max_steps=2,
        per_device_train_batch_size=1,
        learning_rate=1e-5,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        gradient_checkpointing=ckpt,
        logging_steps=1,
        disable_tqdm=True,
        max_length=tokens,
        lmbda=0.0,
        beta=0.0,
        temperature=1.0,
        bf16=False,
    )
    ds = Dataset.from_list([{"messages": chat} for _ in range(4)])
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[probe.callback],
    )
    trainer.train()
    return min(_chat_tokens(tok, chat), tokens)  # the ChatML collator cuts at max_length


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--child")
    ap.add_argument("--only", default=",".join(CONTESTANTS))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.tokens)))
        return
    rows = []
    for c in a.only.split(","):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", c, "--tokens", str(a.tokens)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            err = (proc.stderr.strip() or f"exit code {proc.returncode}").splitlines()
            row = {"contestant": c, "error": " | ".join(err[-4:])}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    by = {r["contestant"]: r for r in rows if "peak_step_bytes" in r}
    ratios = {}
    for mine, theirs in (("kdistill", "trl_gkd"), ("kdistill+ckpt", "trl_gkd+ckpt")):
        if mine in by and theirs in by:
            ratios[f"{theirs}/{mine}"] = round(
                by[theirs]["peak_step_bytes"] / by[mine]["peak_step_bytes"], 2
            )
    for base in ("kdistill", "trl_gkd"):
        if base in by and f"{base}+ckpt" in by:
            ratios[f"{base}/{base}+ckpt"] = round(
                by[base]["peak_step_bytes"] / by[f"{base}+ckpt"]["peak_step_bytes"], 2
            )
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError as exc:
        trl_version = f"not importable: {exc}"
    out = {
        "benchmark": "whole-step peak memory, 2 AdamW steps, peak over step 2",
        "tokens_per_sequence": a.tokens,
        "rows": rows,
        "ratios": ratios,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
    }
    path = HERE / "results" / "step_memory_cpu.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
