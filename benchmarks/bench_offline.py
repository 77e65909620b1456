"""Offline (store) vs online distillation on the bundled SmolLM2-135M pair, in one run.

Writes benchmarks/results/offline_vs_online.json:
  * bytes/token of each store setting (cache plan on real teacher outputs);
  * the default store's real bytes/token and cache build time;
  * training tokens/s from the store vs online (same student init, same steps, same data);
  * held-out KL(teacher || student) and perplexity of both students.
Ratios are the result; absolute seconds depend on the machine. The speed ratio comes from
short runs interleaved online / store over ``--speed-repeats`` rounds (median and range of
the per-round ratios), not from two runs one after the other.

  .venv/bin/python benchmarks/bench_offline.py [--steps 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from kdistill.config import builders
from kdistill.config.loader import load_config
from kdistill.data.lm import CausalCollator, build_lm_datasets
from kdistill.eval.lm_runner import evaluate_lms
from kdistill.models.loading import load_causal_lm
from kdistill.pipeline.cache import plan_rows, run_cache
from kdistill.pipeline.demo import demo_config_path
from kdistill.pipeline.distill_lm import run_distill_lm

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_offline"))
    ap.add_argument("--speed-repeats", type=int, default=3, help="interleaved speed rounds")
    ap.add_argument("--speed-steps", type=int, default=8, help="steps per speed run")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    tokens = args.steps * args.batch * 256
    common = [
        f"training.max_steps={args.steps}",
        f"training.per_device_batch_size={args.batch}",
        f"data.max_train_tokens={tokens}",
        "data.max_eval_tokens=4096",
        f"training.save_steps={args.steps}",
        f"cache.dir={args.out / 'store'}",
        "student.from_teacher={every: 3}",  # the 11-layer cut of the figures below
    ]
    cfg_online = load_config(demo_config_path(), [f"output_dir={args.out / 'online'}", *common])
    store_kind = ["teacher.kind=store", f"teacher.path={args.out / 'store'}"]
    cfg_store = load_config(
        demo_config_path(), [f"output_dir={args.out / 'store_run'}", *store_kind, *common]
    )
    result: dict = {
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "train_tokens": tokens,
    }

    teacher, tok = load_causal_lm("smollm2-135m", frozen=True)
    train, held = build_lm_datasets(tok, "kjv", **builders.data_kwargs(cfg_online))
    with torch.no_grad():
        lp = torch.log_softmax(teacher(input_ids=train.examples[:4]).logits.float(), -1)
    result["plan"] = plan_rows(lp.reshape(-1, lp.shape[-1]), len(tok))

    t0 = time.perf_counter()
    _, report = run_cache(cfg_online)  # the store from the online config's teacher model
    result["store"] = {
        "method": cfg_store.cache.method,
        "n": cfg_store.cache.n,
        "values": cfg_store.cache.value_kind(),
        "bytes_per_token": report.bytes_per_token,
        "build_seconds": time.perf_counter() - t0,
    }

    runs = {}
    for name, cfg in (("online", cfg_online), ("store", cfg_store)):
        run_dir = run_distill_lm(cfg)
        summary = json.loads((run_dir / "train_summary.json").read_text())
        runs[name] = {
            "run_dir": run_dir,
            "train_seconds": summary["train_seconds"],
            "tokens_per_s": tokens / summary["train_seconds"],
        }
    students = {
        n: load_causal_lm(str(r["run_dir"] / "model"), frozen=True)[0] for n, r in runs.items()
    }
    ev = evaluate_lms(
        {"teacher": teacher, **students},
        "teacher",
        held,
        CausalCollator(tok.pad_token_id),
        vocab_size=len(tok),
    )
    for name in runs:
        runs[name].update(
            kl_to_teacher=ev[name]["kl_to_teacher"],
            perplexity=ev[name]["perplexity"],
            top1_agreement=ev[name]["top1_agreement"],
        )
        runs[name]["run_dir"] = str(runs[name]["run_dir"])
    result["runs"] = runs
    result["teacher_perplexity"] = ev["teacher"]["perplexity"]
    # speed: short runs interleaved (online, store, online, store, ...), so a neighbour's
    # load lands on both; the ratio is taken within each round
    speed: dict[str, list[float]] = {"online": [], "store": []}
    steps = args.speed_steps
    for rep in range(args.speed_repeats):
        for name, kind in (("online", []), ("store", store_kind)):
            cfg_r = load_config(
                demo_config_path(),
                [
                    *common,
                    *kind,
                    f"output_dir={args.out / f'{name}_speed{rep}'}",
                    f"training.max_steps={steps}",
                    f"training.save_steps={steps}",
                ],
            )
            run_dir = run_distill_lm(cfg_r)
            secs = json.loads((run_dir / "train_summary.json").read_text())["train_seconds"]
            speed[name].append(steps * args.batch * 256 / secs)
    per_round = [s / o for o, s in zip(speed["online"], speed["store"], strict=True)]
    result["speed_rounds"] = {
        "tokens_per_s": speed,
        "store_vs_online_per_round": per_round,
        "steps_per_run": steps,
    }
    result["ratios"] = {
        "store_vs_online_tokens_per_s": statistics.median(per_round),
        "store_vs_online_tokens_per_s_range": [min(per_round), max(per_round)],
        "store_vs_online_kl": runs["store"]["kl_to_teacher"] / runs["online"]["kl_to_teacher"],
        "store_vs_online_perplexity": runs["store"]["perplexity"] / runs["online"]["perplexity"],
    }
    result["goals"] = {
        "bytes_per_token<=48": report.bytes_per_token <= 48,
        "kl_within_2pct": abs(result["ratios"]["store_vs_online_kl"] - 1) <= 0.02,
        "tokens_per_s>=1.8x": result["ratios"]["store_vs_online_tokens_per_s"] >= 1.8,
    }
    out = HERE / "results" / "offline_vs_online.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {"store": result["store"], "ratios": result["ratios"], "goals": result["goals"]},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
