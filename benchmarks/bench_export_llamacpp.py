"""A trained student exported by `kdistill export` (F32, F16, Q8_0 and Q4_K_M GGUF), served by
the real llama.cpp server (the `serve` extra), against the torch student: greedy text on fixed
prompts and the per-token log-probabilities of the torch student's greedy tokens. Writes
benchmarks/results/export_llamacpp_cpu.json.

  .venv/bin/python benchmarks/bench_export_llamacpp.py RUN_FOLDER [--out runs/bench_export]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import httpx
import torch

from bench_on_policy_served import serve

HERE = Path(__file__).resolve().parent
KDISTILL = str(Path(sys.executable).with_name("kdistill"))
PROMPTS = [
    "In the beginning God created",
    "And the LORD said unto Moses,",
    "Blessed are the meek: for",
    "The Python programming language is",
    "Once upon a time, in a small village,",
    "The capital of France is",
    "For God so loved the world, that",
    "To make a cup of tea, first",
]
NEW_TOKENS = 24


def torch_greedy(model, tok, prompt: str) -> tuple[str, list[float], list[int]]:
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None)
        new = out[0, ids.shape[1] :]
        logits = model(input_ids=out).logits[0, ids.shape[1] - 1 : -1].float()
        lp = torch.log_softmax(logits, -1).gather(1, new[:, None])[:, 0]
    return tok.decode(new), lp.tolist(), new.tolist()


def served(url: str, prompt: str) -> tuple[str, list[float]]:
    body = {
        "prompt": prompt,
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "repeat_penalty": 1.0,  # llama-cpp-python's default is 1.1: not plain greedy
        "top_k": 1,
        "logprobs": 1,
        "ignore_eos": True,
    }
    r = httpx.post(url + "/v1/completions", json=body, timeout=300).json()
    choice = r["choices"][0]
    return choice["text"], [float(x) for x in choice["logprobs"]["token_logprobs"]]


def main() -> None:
    from kdistill.models.loading import load_causal_lm

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_export"))
    args = ap.parse_args()
    kinds = ("f32", "f16", "q8_0", "q4_k_m")
    cmd = [KDISTILL, "export", str(args.run), "--out", str(args.out), "--gguf", ",".join(kinds)]
    subprocess.run([*cmd, "--fresh"], check=True)
    model, tok = load_causal_lm(str(args.out / "hf"), frozen=True)
    ref = {p: torch_greedy(model, tok, p) for p in PROMPTS}
    sizes = {k: (args.out / f"student-{k}.gguf").stat().st_size for k in kinds}
    result = {"run": str(args.run), "prompts": len(PROMPTS), "new_tokens": NEW_TOKENS}
    result["gguf_bytes"] = sizes
    for kind in kinds:
        proc, url = serve(args.out / f"student-{kind}.gguf", args.out / f"server-{kind}.log")
        try:
            same, diffs, rows = 0, [], []
            for p in PROMPTS:
                text, lps = served(url, p)
                t_text, t_lps, _ = ref[p]
                equal = text == t_text
                same += equal
                if equal:  # the same tokens: compare their log-probabilities position by position
                    diffs += [abs(a - b) for a, b in zip(lps, t_lps, strict=False)]
                rows.append({"prompt": p, "llama_cpp": text, "torch": t_text, "same": equal})
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        result[kind] = {
            "same_greedy_text": same,
            "max_abs_logprob_diff": max(diffs) if diffs else None,
            "mean_abs_logprob_diff": sum(diffs) / len(diffs) if diffs else None,
            "compared_tokens": len(diffs),
            "size_vs_f32": sizes[kind] / sizes["f32"],
            "texts": rows,
        }
        print(kind, same, "/", len(PROMPTS), result[kind]["max_abs_logprob_diff"], flush=True)
    out = HERE / "results" / "export_llamacpp_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in kinds}))


if __name__ == "__main__":
    main()
