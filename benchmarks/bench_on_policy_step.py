"""One on-policy distillation step, ours vs TRL's GKDTrainer (lmbda = 1), on the bundled
SmolLM2-135M teacher -> 11-layer student pair.

Writes benchmarks/results/on_policy_step_cpu.json: generated tokens/s of a full on-policy
optimizer step (student sampling with the KV cache + teacher forward on prompt + sample +
reverse KL + backward + AdamW). Matched settings: the same student init, teacher and
prompts (the first 64 tokens of KJV blocks), batch, sampling at T = 1 with top-k off and
top-p 1; both sides generate exactly ``--new`` tokens (min_new_tokens = max_new_tokens),
so only generated tokens are counted; objective: reverse KL at T = 1 over full logits (TRL:
generalized JSD with beta = 1; ours: divergence reverse_kl, no chunking, no CE). Fresh
trainers per round, rounds interleaved (ours, TRL, ours, TRL, ...); the first ``--warmup``
steps of each are dropped; the figure is the median over rounds of each round's median
step, with the per-round ratio's range.

  .venv/bin/pip install --no-deps trl==1.16.0     # benchmark-only dependency
  .venv/bin/python benchmarks/bench_on_policy_step.py [--steps 4] [--new 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import TrainingArguments

from bench_kd_step import StepTimer, _args, gkd_trainer, trl_version
from kdistill.data.lm import CausalCollator, build_lm_datasets
from kdistill.models.loading import load_causal_lm
from kdistill.models.student import build_student_from_teacher
from kdistill.training.on_policy import OnPolicy
from kdistill.training.step import KDSchedules
from kdistill.training.trainer import KDTrainer

HERE = Path(__file__).resolve().parent
PROMPT = 64


def run_ours(teacher, tok, rows, steps, batch, new, out):
    student = build_student_from_teacher(teacher, seed=0, every=3)
    timer = StepTimer()
    trainer = KDTrainer(
        model=student,
        args=TrainingArguments(**_args(out / "ours", steps, batch, remove_unused_columns=False)),
        train_dataset=rows,
        data_collator=CausalCollator(tok.pad_token_id),
        teacher=teacher,
        schedules=KDSchedules.build(kd_temperature=1.0, soft_weight=1.0, hard_weight=0.0),
        divergence="reverse_kl",
        vocab_size=len(tok),
        on_policy=OnPolicy(
            max_new_tokens=new, min_new_tokens=new, prompt_tokens=PROMPT, divergence="reverse_kl"
        ),
        pad_token_id=tok.pad_token_id,
        eos_token_ids=(tok.eos_token_id,),
        callbacks=[timer],
    )
    trainer.train()
    return timer.times


class _PromptCollator:
    """GKDTrainer's keys: the prompt (generated from) and the same tokens as the batch."""

    def __init__(self, pad: int):
        self.inner = CausalCollator(pad)

    def __call__(self, items):
        b = self.inner(items)
        return {
            "input_ids": b["input_ids"],
            "attention_mask": b["attention_mask"],
            "labels": b["labels"],
            "prompts": b["input_ids"],
            "prompt_attention_mask": b["attention_mask"],
        }


def run_trl(teacher, tok, rows, steps, batch, new, out):
    import datasets

    # GKDTrainer divides the on-policy loss by the valid labels of the batch it was *given*
    # (Trainer counts them before its training_step swaps in the samples): prompt-only rows
    # (all labels masked) make that 0 and the first step NaN, so TRL gets the prompt tokens
    # as labels (a different scale of its loss, not of its speed)
    ids = [r["input_ids"].tolist() for r in rows]
    hf_ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids}).with_format("torch")
    student = build_student_from_teacher(teacher, seed=0, every=3)
    timer = StepTimer()
    trainer = gkd_trainer(
        teacher, tok, student, hf_ds, _PromptCollator(tok.pad_token_id), timer, out, steps,
        batch, lmbda=1.0, beta=1.0, max_new_tokens=new, max_length=PROMPT + new,
    )  # fmt: skip
    trainer.generation_config.min_new_tokens = new  # exactly `new` tokens, as ours
    trainer.generation_kwargs["min_new_tokens"] = new
    trainer.train()
    return timer.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new", type=int, default=32, help="generated tokens per prompt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_on_policy_step"))
    ap.add_argument("--json", type=Path, default=HERE / "results" / "on_policy_step_cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher, tok = load_causal_lm("smollm2-135m", frozen=True)
    train_ds, _ = build_lm_datasets(
        tok, "kjv", block_size=PROMPT, held_out_fraction=0.05,
        max_train_tokens=args.steps * args.batch * PROMPT,
    )  # fmt: skip
    # prompts only: the whole row is the prompt (labels masked), on both sides
    rows = [
        {"input_ids": train_ds[i]["input_ids"], "labels": torch.full((PROMPT,), -100)}
        for i in range(len(train_ds))
    ]
    generated = args.batch * args.new
    common = (teacher, tok, rows, args.steps, args.batch, args.new, args.out)
    runs = {"kdistill": run_ours, "trl_gkd": run_trl}
    raw: dict[str, list[list[float]]] = {k: [] for k in runs}
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        for name, fn in runs.items():
            times = fn(*common)[args.warmup :]
            raw[name].append(times)
            print(f"round {rep + 1} {name}: median step {statistics.median(times):.2f} s")
    medians = {k: [statistics.median(t) for t in v] for k, v in raw.items()}
    per_round = [t / o for o, t in zip(medians["kdistill"], medians["trl_gkd"], strict=True)]
    result = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "trl": trl_version(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "prompt_tokens": PROMPT,
        "new_tokens": args.new,
        "generated_tokens_per_step": generated,
        "steps_timed_per_round": args.steps - args.warmup,
        "rounds": args.repeats,
        "wall_s": time.perf_counter() - t0,
        "contestants": {
            k: {
                "round_step_seconds": raw[k],
                "round_median_step_s": medians[k],
                "generated_tokens_per_s": generated / statistics.median(medians[k]),
            }
            for k in runs
        },
        "speed_vs_trl": statistics.median(per_round),
        "speed_vs_trl_per_round": per_round,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    for k, v in result["contestants"].items():
        print(f"{k}: {v['generated_tokens_per_s']:.1f} generated tokens/s")
    lo, hi = min(per_round), max(per_round)
    print(f"kdistill vs TRL: {result['speed_vs_trl']:.2f}x (rounds {lo:.2f}-{hi:.2f})")


if __name__ == "__main__":
    main()
