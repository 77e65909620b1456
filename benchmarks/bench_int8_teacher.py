"""The bundled SmolLM2-135M teacher held as weight-only int8 (``teacher.dtype: int8``), or
cast to bfloat16 / float16 as a distillation run casts it, against the same teacher in fp32:
weight bytes in memory, forward speed (interleaved rounds, baseline fp32 in the same run), and
how far its soft labels move: KL(fp32 teacher || the other) and top-1 agreement on held-out
KJV blocks, at T = 1 and T = 2.

  .venv/bin/python benchmarks/bench_int8_teacher.py [--dtype int8|bfloat16|float16]
      [--blocks 8] [--rounds 3]

Writes ``benchmarks/results/<dtype>_teacher_cpu.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from kdistill.data.lm import CausalCollator, build_lm_datasets
from kdistill.models.loading import load_causal_lm

HERE = Path(__file__).resolve().parent
KINDS = {
    "int8": "int8 (weight-only, torchao)",
    "bfloat16": "bfloat16 (cast from fp32)",
    "float16": "float16 (cast from fp32)",
}


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if hasattr(p, "qdata"):
            total += p.qdata.numel() * p.qdata.element_size()
            total += p.scale.numel() * p.scale.element_size()
        else:
            total += p.numel() * p.element_size()
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", choices=("int8", "bfloat16", "float16"), default="int8")
    a = ap.parse_args()
    name = a.dtype
    fp32, tok = load_causal_lm("smollm2-135m", frozen=True)
    if name == "int8":
        other, _ = load_causal_lm("smollm2-135m", "int8", frozen=True)
    else:  # as a distillation run does: loaded in fp32 (a student is cut from that), then cast
        other = copy.deepcopy(fp32).to(getattr(torch, name))
    _, held = build_lm_datasets(
        tok, "kjv", block_size=256, held_out_fraction=0.05, max_eval_tokens=256 * a.blocks
    )
    batch = CausalCollator(tok.pad_token_id)([held[i] for i in range(min(a.blocks, len(held)))])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    valid = batch["shift_labels"] != -100
    quality = {}
    with torch.no_grad():
        lp = fp32(input_ids=ids, attention_mask=mask).logits[..., : len(tok)].float()
        lq = other(input_ids=ids, attention_mask=mask).logits[..., : len(tok)].float()
        for t in (1.0, 2.0):
            p, q = (lp / t).log_softmax(-1), (lq / t).log_softmax(-1)
            kl = (p.exp() * (p - q)).sum(-1)[valid]
            quality[f"T={t:g}"] = {f"kl_fp32_to_{name}": float(kl.mean())}
        quality["top1_agreement"] = float((lp.argmax(-1) == lq.argmax(-1))[valid].float().mean())
    rounds = []
    with torch.no_grad():
        for m in (fp32, other):  # one untimed warm-up each
            m(input_ids=ids, attention_mask=mask)
        for _ in range(a.rounds):  # interleaved: fp32, other, fp32, other, ...
            row = {}
            for key, m in (("fp32", fp32), (name, other)):
                t0 = time.perf_counter()
                m(input_ids=ids, attention_mask=mask)
                row[key] = time.perf_counter() - t0
            rounds.append(row)
    ratios = [r["fp32"] / r[name] for r in rounds]
    tokens = int(mask.sum())
    out = {
        "benchmark": f"{KINDS[name]} vs fp32 teacher, SmolLM2-135M",
        "weight_bytes": {"fp32": _weight_bytes(fp32), name: _weight_bytes(other)},
        f"memory_ratio_fp32_over_{name}": round(_weight_bytes(fp32) / _weight_bytes(other), 2),
        "eval_tokens": int(valid.sum()),
        "quality": quality,
        "forward_tokens": tokens,
        "forward_seconds": rounds,
        f"speed_ratio_{name}_over_fp32": {
            "median": round(statistics.median(ratios), 3),
            "per_round": [round(r, 3) for r in ratios],
        },
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    path = HERE / "results" / f"{name}_teacher_cpu.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in (f"memory_ratio_fp32_over_{name}", "quality")}, indent=2))
    print(json.dumps(out[f"speed_ratio_{name}_over_fp32"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
