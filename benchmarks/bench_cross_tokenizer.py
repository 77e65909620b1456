"""Cross-tokenizer distillation on real models, judged by held-out bits per byte (issue 15).

Part ``gemma``: Gemma 3 270M base (262,144-token SentencePiece vocabulary; the ``gemma``
extra) teaches the demo's SmolLM2 student (16 of 30 layers, 896 MLP neurons, pruned by
importance from SmolLM2-135M-Instruct; 49,152-token byte-level BPE). First the teacher's and
the untrained student's bits per byte on held-out KJV (is the teacher better?); then, for
each seed, cross-tokenizer KD + CE (``teacher.kind: aligned``, mapped vocabulary, 0.7 / 0.3)
and CE alone (``teacher.kind: none``) at the same steps and data, run in turn; held-out bits
per byte of each, and the mapped share of the teacher's mass.

Part ``small_vocab``: SmolLM2-135M-Instruct teaches a student with its own 8,192-token
byte-level BPE trained on the KJV training split (``student.from_teacher.tokenizer_vocab``,
the demo's cut otherwise): parameters vs the demo's student, and held-out bits per byte with
the teacher (aligned, mapped) and without (CE), at the same steps and therefore the same
training bytes (the same tokenizer on both arms); the training bytes are reported.

Bits per byte: every model scores the same held-out characters (the first ``--eval-chars``
of the seed's own held-out split: the split depends on the run's seed) with its own
tokenizer (:func:`kdistill.eval.lm_runner.score_span`, windows of 256 tokens).

  .venv/bin/python benchmarks/bench_cross_tokenizer.py [--parts gemma,small_vocab]
      [--steps 30] [--seeds 0,1] [--eval-chars 12000] [--reuse]
  (--reuse keeps finished run folders under --out and evaluates them again)

Writes ``benchmarks/results/cross_tokenizer_cpu.json`` (``--out`` for the run folders).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
from pathlib import Path

import torch

from kdistill.config import builders
from kdistill.config.loader import load_config
from kdistill.data.lm import build_lm_datasets, held_out_texts
from kdistill.eval.lm_runner import score_span
from kdistill.models.loading import count_params, load_causal_lm
from kdistill.pipeline.demo import demo_config_path
from kdistill.pipeline.distill_lm import load_models, run_distill_lm

HERE = Path(__file__).resolve().parent
DEMO_CUT = "layers: 16, intermediate_size: 896"
WINDOW = 256


def bits_per_byte(model, tok, texts: list[str]) -> dict:
    bits = n_bytes = n_tokens = 0
    model.eval()
    with torch.no_grad():
        for text in texts:
            b, nb, nt = score_span(model, tok, text, WINDOW)
            bits, n_bytes, n_tokens = bits + b, n_bytes + nb, n_tokens + nt
    return {"bits_per_byte": bits / n_bytes, "bytes": n_bytes, "tokens": n_tokens}


def held_out(seed: int, max_chars: int) -> list[str]:
    """The first ``max_chars`` held-out characters of the run with ``seed``: the held-out
    split depends on the run's seed, so each seed is judged on its own held-out chapters
    (another seed's may be in its training split)."""
    return held_out_texts("kjv", held_out_fraction=0.05, seed=seed, max_chars=max_chars)


def _run(out: Path, name: str, over: list[str]) -> tuple[Path, dict]:
    """A finished run in ``out / name`` is reused (``--reuse``: evaluate again only)."""
    run_dir = out / name
    if not (run_dir / "train_summary.json").is_file() or not (run_dir / "model").is_dir():
        cfg = load_config(demo_config_path(), [f"output_dir={run_dir}", *over])
        run_distill_lm(cfg, fresh=True)
    return run_dir, json.loads((run_dir / "train_summary.json").read_text())


def _arms(out, chars: int, seeds, common, arms: dict[str, list[str]]) -> dict:
    """Each seed runs every arm in turn; each final model is scored for bits per byte on
    the seed's own held-out text."""
    rows = {name: [] for name in arms}
    for seed in seeds:
        texts = held_out(seed, chars)
        for name, over in arms.items():
            run_dir, summary = _run(out, f"{name}_s{seed}", [f"seed={seed}", *common, *over])
            model, tok = load_causal_lm(str(run_dir / "model"), frozen=True)
            bpb = bits_per_byte(model, tok, texts)
            rows[name].append(
                {
                    "seed": seed,
                    **bpb,
                    "train_seconds": summary["train_seconds"],
                    "target_tokens": summary["target_tokens"],
                    "teacher_signal": summary.get("teacher_signal"),
                    "parameters": count_params(model),
                }
            )
            print(json.dumps({"arm": name, **rows[name][-1]}), flush=True)
            del model
    return {
        name: {
            "runs": r,
            "bits_per_byte_mean": statistics.mean(x["bits_per_byte"] for x in r),
            "bits_per_byte": [round(x["bits_per_byte"], 4) for x in r],
        }
        for name, r in rows.items()
    }


def _common(teacher: str, student_from: str, steps: int, batch: int) -> list[str]:
    return [
        f"teacher.model={teacher}",
        f"student.from_teacher={{{student_from}}}",
        f"training.max_steps={steps}",
        f"training.per_device_batch_size={batch}",
        f"training.save_steps={steps}",
        f"data.max_train_tokens={steps * batch * 256}",
    ]


ARMS = {
    "kd_ce": ["teacher.kind=aligned", "teacher.objective=mapped"],
    "ce": ["teacher.kind=none"],
}


def gemma_start(out: Path, chars: int, seeds, steps: int, batch: int) -> dict:
    """Held-out bits per byte before training, per seed's held-out text: the teacher,
    SmolLM2 whole, and the pruned student exactly as that seed's runs build it."""
    teacher, t_tok = load_causal_lm("gemma3-270m", frozen=True)
    smol, s_tok = load_causal_lm("smollm2-135m", frozen=True)
    common = _common("gemma3-270m", f"model: smollm2-135m, {DEMO_CUT}", steps, batch)
    start = {}
    for seed in seeds:
        texts = held_out(seed, chars)
        cfg = load_config(
            demo_config_path(), [f"output_dir={out / 'untrained'}", f"seed={seed}", *common]
        )
        _, model, tok, _, _ = load_models(
            cfg,
            need_teacher=False,
            calibration=lambda t, c=cfg: build_lm_datasets(t, "kjv", **builders.data_kwargs(c))[0],
        )
        start[f"seed{seed}"] = {
            "teacher_gemma3_270m": bits_per_byte(teacher, t_tok, texts),
            "smollm2_135m": bits_per_byte(smol, s_tok, texts),
            "student_untrained": {
                **bits_per_byte(model, tok, texts),
                "layers": model.config.kdistill_teacher_layers,
            },
        }
        del model
    return start


def part_gemma(out: Path, chars: int, seeds, steps: int, batch: int) -> dict:
    start = gemma_start(out, chars, seeds, steps, batch)
    common = _common("gemma3-270m", f"model: smollm2-135m, {DEMO_CUT}", steps, batch)
    return {"start": start, "arms": _arms(out, chars, seeds, common, ARMS)}


def part_small_vocab(out: Path, chars: int, seeds, steps: int, batch: int) -> dict:
    student = f"model: smollm2-135m, {DEMO_CUT}, tokenizer_vocab: 8192"
    common = _common("smollm2-135m", student, steps, batch)
    arms = ARMS
    result = _arms(out, chars, seeds, common, arms)
    model, tok = load_causal_lm(str(out / f"kd_ce_s{seeds[0]}" / "model"), frozen=True)
    vocab_info = model.config.kdistill_vocab  # parameters before the new vocabulary: the demo's
    sample = "".join(held_out(seeds[0], chars))
    bytes_per_token = len(sample.encode()) / len(tok(sample, add_special_tokens=False)["input_ids"])
    del model
    return {
        **result,
        "student_parameters": vocab_info["parameters_after"],
        "demo_student_parameters": vocab_info["parameters_before"],
        "tokenizer_vocab": len(tok),
        "held_out_bytes_per_token": bytes_per_token,
        "training_bytes_per_arm": steps * batch * 256 * bytes_per_token,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", default="gemma,small_vocab")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--eval-chars", type=int, default=12000)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_cross_tokenizer"))
    ap.add_argument("--reuse", action="store_true", help="keep finished runs; evaluate again")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    dest = HERE / "results" / "cross_tokenizer_cpu.json"
    result = json.loads(dest.read_text()) if dest.exists() else {}
    result.update(
        {
            "benchmark": "cross_tokenizer",
            "machine": platform.platform(),
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "batch": args.batch,
            "block_size": 256,
            "seeds": seeds,
            "eval_chars": args.eval_chars,
            "eval_text": "the first eval_chars characters of each seed's own held-out split",
        }
    )
    for part in args.parts.split(","):
        out = args.out / part
        if out.exists() and not args.reuse:
            shutil.rmtree(out)
        fn = {"gemma": part_gemma, "small_vocab": part_small_vocab}[part]
        result[part] = fn(out, args.eval_chars, seeds, args.steps, args.batch)
        dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("gemma", "small_vocab")}, indent=1))


if __name__ == "__main__":
    main()
