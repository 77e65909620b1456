"""One KD training step, ours vs TRL's, on the bundled SmolLM2-135M -> 11-layer student pair.

Writes benchmarks/results/kd_step_<device>.json:
  * tokens/s of a full optimizer step (student forward + teacher forward + KD loss + backward
    + AdamW) for kdistill's KDTrainer and TRL's GKDTrainer, same batches, in one run;
  * the achieved FLOP/s as a fraction of this machine's measured fp32 matmul peak (MFU),
    counting 6 * N_student + 2 * N_teacher FLOP per token.

Matched settings: the same student init, teacher, tokenised KJV blocks (batch x 256 tokens,
every position a target), fp32 on the CPU, AdamW at lr 5e-4 with no warm-up, no gradient
checkpointing; objective = forward KL(teacher || student) at T = 1 and nothing else (TRL:
generalized JSD with beta = 0, lmbda = 0 so no on-policy generation, seq_kd off; ours:
soft_weight 1, hard_weight 0). Both trainers get the same pre-tokenised dataset and collator
output, so no tokenisation or chat formatting is timed. Step times come from a callback
(on_step_begin -> on_step_end); the first ``--warmup`` steps are dropped. Contestants run
interleaved (``--repeats`` rounds of A B C): the figure is the median over rounds of each
round's median step, with the spread across rounds.

  .venv/bin/pip install --no-deps trl==1.16.0     # benchmark-only dependency
  .venv/bin/python benchmarks/bench_kd_step.py [--steps 8] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from kdistill.data.lm import CausalCollator, build_lm_datasets
from kdistill.models.loading import count_params, load_causal_lm
from kdistill.models.student import build_student_from_teacher
from kdistill.training.step import KDSchedules
from kdistill.training.trainer import KDTrainer

HERE = Path(__file__).resolve().parent
BLOCK = 256


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t0)


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an (n x n) @ (n x n) product on this machine and thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _args(out: Path, steps: int, batch: int, **extra) -> dict:
    return dict(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=5e-4,
        warmup_steps=0,
        lr_scheduler_type="constant",
        logging_steps=steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        **extra,
    )


def run_ours(teacher, tok, train_ds, steps: int, batch: int, out: Path, chunk: int | None):
    student = build_student_from_teacher(teacher, seed=0, every=3)
    timer = StepTimer()
    trainer = KDTrainer(
        model=student,
        args=TrainingArguments(**_args(out / "ours", steps, batch, remove_unused_columns=False)),
        train_dataset=train_ds,
        data_collator=CausalCollator(tok.pad_token_id),
        teacher=teacher,
        schedules=KDSchedules.build(kd_temperature=1.0, soft_weight=1.0, hard_weight=0.0),
        vocab_size=len(tok),
        loss_chunk_size=chunk,
        callbacks=[timer],
    )
    out = trainer.train()
    return timer.times, count_params(student), out.training_loss


class _TRLCollator:
    """The same tensors our collator makes, in the keys GKDTrainer reads."""

    def __init__(self, pad: int):
        self.inner = CausalCollator(pad)

    def __call__(self, items):
        b = self.inner(items)
        return {k: b[k] for k in ("input_ids", "attention_mask", "labels")}


def run_trl(teacher, tok, train_ds, steps: int, batch: int, out: Path):
    import datasets

    # TRL wants a datasets.Dataset: the very same token blocks, as torch tensors
    rows = [train_ds[i] for i in range(len(train_ds))]
    hf_ds = datasets.Dataset.from_dict(
        {k: [r[k].tolist() for r in rows] for k in ("input_ids", "labels")}
    ).with_format("torch")
    student = build_student_from_teacher(teacher, seed=0, every=3)
    timer = StepTimer()
    trainer = gkd_trainer(
        teacher, tok, student, hf_ds, _TRLCollator(tok.pad_token_id), timer, out, steps, batch,
        lmbda=0.0, beta=0.0, max_length=BLOCK,
    )  # fmt: skip
    out = trainer.train()
    return timer.times, trl_version(), out.training_loss


def gkd_trainer(teacher, tok, student, hf_ds, collator, timer, out, steps, batch, **gkd):
    """TRL's GKDTrainer with the shared matched settings (T = 1, no seq_kd) and ``gkd``."""
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    cfg = GKDConfig(
        **_args(out / "trl", steps, batch),
        temperature=1.0,
        seq_kd=False,
        remove_unused_columns=False,
        **gkd,
    )
    return GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=cfg,
        train_dataset=hf_ds,
        data_collator=collator,
        processing_class=tok,
        callbacks=[timer],
    )


def trl_version() -> str:
    import trl

    return trl.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_kd_step"))
    ap.add_argument(
        "--chunks",
        default="none,128",
        help="loss_chunk_size values for kdistill contestants ('none' = full logits)",
    )
    ap.add_argument("--no-trl", action="store_true", help="leave TRL out")
    ap.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats (A B C, A B C, ...)"
    )
    ap.add_argument("--json", type=Path, default=HERE / "results" / "kd_step_cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher, tok = load_causal_lm("smollm2-135m", frozen=True)
    tokens = args.steps * args.batch * BLOCK
    train_ds, _ = build_lm_datasets(
        tok, "kjv", block_size=BLOCK, held_out_fraction=0.05, max_train_tokens=tokens
    )
    tokens_per_step = args.batch * BLOCK
    n_teacher = count_params(teacher)
    peak = matmul_peak_flops()
    result: dict = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "tokens_per_step": tokens_per_step,
        "steps_timed": args.steps - args.warmup,
        "matmul_peak_flops": peak,
        "matmul_peak_method": "best of 5 fp32 2048x2048 @ 2048x2048 products (2 n^3 FLOP)",
        "flop_per_token_formula": "6 * N_student + 2 * N_teacher (all parameters; the tied "
        "embedding counts once, as the output head; attention score FLOPs not counted)",
        "n_teacher": n_teacher,
        "contestants": {},
    }
    t_start = time.perf_counter()
    common = (teacher, tok, train_ds, args.steps, args.batch, args.out)
    runs = []
    for c in args.chunks.split(","):
        chunk = None if c == "none" else int(c)
        name = "kdistill" if chunk is None else f"kdistill_chunk{chunk}"
        runs.append((name, lambda chunk=chunk: run_ours(*common, chunk)))
    if not args.no_trl:
        runs.append(("trl_gkd", lambda: run_trl(*common)))
    # interleaved repeats: A B C, A B C, ... so a neighbour's load lands on every contestant
    n_student = None
    raw: dict[str, list] = {name: [] for name, _ in runs}
    for rep in range(args.repeats):
        for name, fn in runs:
            if "error" in result["contestants"].get(name, {}):
                continue
            try:
                times, extra, loss = fn()
            except Exception as exc:
                result["contestants"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if name.startswith("kdistill"):
                n_student = extra
            timed = times[args.warmup :]
            raw[name].append({"step_seconds": timed, "loss": loss, "extra": extra})
            print(f"repeat {rep + 1} {name}: median step {statistics.median(timed):.2f} s")
    for name, reps in raw.items():
        if not reps:
            continue
        medians = [statistics.median(r["step_seconds"]) for r in reps]
        rates = [tokens_per_step / m for m in medians]
        entry = {
            "repeats": [r["step_seconds"] for r in reps],
            "repeat_median_step_s": medians,
            "median_step_s": statistics.median(medians),
            "tokens_per_s": statistics.median(rates),
            "tokens_per_s_spread": (max(rates) - min(rates)) / statistics.median(rates),
            "mean_train_loss": reps[0]["loss"],
        }
        if name == "trl_gkd":
            entry["trl_version"] = reps[0]["extra"]
        result["contestants"][name] = entry
        rate, spread = entry["tokens_per_s"], entry["tokens_per_s_spread"]
        print(f"{name}: {rate:.1f} tokens/s (spread {spread:.1%})")
    result["n_student"] = n_student
    flop_per_token = 6 * (n_student or 0) + 2 * n_teacher
    result["flop_per_token"] = flop_per_token
    for entry in result["contestants"].values():
        if "tokens_per_s" in entry:
            entry["achieved_flops"] = entry["tokens_per_s"] * flop_per_token
            entry["mfu"] = entry["achieved_flops"] / peak
    c = result["contestants"]
    if "tokens_per_s" in c.get("trl_gkd", {}):
        for name, entry in c.items():
            if name.startswith("kdistill") and "tokens_per_s" in entry:
                entry["speed_vs_trl"] = entry["tokens_per_s"] / c["trl_gkd"]["tokens_per_s"]
                # the same ratio within each interleaved round: its range is the spread
                entry["speed_vs_trl_per_repeat"] = [
                    t / o
                    for o, t in zip(
                        entry["repeat_median_step_s"],
                        c["trl_gkd"]["repeat_median_step_s"],
                        strict=False,
                    )
                ]
    result["seconds"] = time.perf_counter() - t_start
    out = args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "contestants"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
