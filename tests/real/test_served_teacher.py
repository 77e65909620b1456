"""A real OpenAI-compatible server: llama-cpp-python serving the bundled SmolLM2 GGUF on
127.0.0.1. Greedy parity with the local teacher, exactly-once generation through injected
faults, and a student fine-tuned on the served teacher's generations (soft term from its
top logprobs) that agrees with the teacher more than before."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from kdistill.cli.main import main
from kdistill.data.generations import Prompt
from kdistill.models.bundled import bundled_gguf_path
from kdistill.teachers.local_gen import LocalGenerator
from tests.conftest import demo_as_tested
from tests.fakes import FaultProxy

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="needs llama-cpp-python[server] (scripts/setup_env.sh test installs it)",
    ),
]
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src/kdistill/configs/demo.yaml"
GREEDY = {"repeat_penalty": 1.0}  # llama.cpp's default 1.1 is not greedy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: Path, log: Path):
    """Start llama_cpp.server on a free port; yield its URL; stop it."""
    port = _free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host"]
    argv += ["127.0.0.1", "--port", str(port), "--logits_all", "true", "--n_ctx", "1024"]
    argv += ["--n_threads", "2", "--model_alias", "smollm2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-800:]}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """The bundled GGUF as shipped (Q4_1)."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    yield from _serve(bundled_gguf_path("smollm2-135m"), log)


@pytest.fixture(scope="module")
def llama_server_f32(tmp_path_factory):
    """The same weights de-quantised to F32: what the local teacher computes with."""
    from tests.real.gguf_f32 import dequantised_copy

    folder = tmp_path_factory.mktemp("llama_f32")
    model = dequantised_copy(bundled_gguf_path("smollm2-135m"), folder / "smollm2-f32.gguf")
    yield from _serve(model, folder / "server.log")
    model.unlink()


def _complete(url: str, prompt: str, max_tokens: int, **extra) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 1}
    r = httpx.post(url + "/v1/completions", json={**body, **GREEDY, **extra}, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["logprobs"]


PARITY_PROMPTS = [
    "In the beginning God created",
    "The LORD is my shepherd;",
    "For God so loved the world,",
    "And the LORD said unto Moses,",
    "Python is a programming language that",
    "Once upon a time, there was",
]


def test_greedy_served_matches_local_or_diverges_only_at_near_ties(llama_server, real_teacher):
    """The server computes in Q4_1 weights with 8-bit activations; the local teacher uses the
    same weights de-quantised to fp32. Where their greedy paths part, the local teacher must
    rank the server's token within a hair of its own: a quantisation near-tie."""
    model, tok = real_teacher
    gen = LocalGenerator(model, tok)
    params = {"sampling_temperature": 0, "max_tokens": 12, "mode": "completions"}
    params["top_logprobs"] = 20
    same, gaps, noise = 0, [], []
    for i, text in enumerate(PARITY_PROMPTS):
        lp = _complete(llama_server, text, 12)
        served = lp["tokens"]
        local = gen.generate(Prompt(id=str(i), text=text), 0, params)
        j = next(
            (k for k, (a, b) in enumerate(zip(served, local["tokens"], strict=True)) if a != b),
            None,
        )
        # the two backends' log-probs of the same tokens on the shared prefix: the numeric noise
        for k in range(len(served) if j is None else j):
            top = dict((p, v) for p, v in local["top_logprobs"][k])
            noise.append(abs(lp["token_logprobs"][k] - top[served[k]]))
        if j is None:
            same += 1
            continue
        ranked = [p for p, _ in local["top_logprobs"][j]]
        assert served[j] in ranked[:3], f"{text!r}: served {served[j]!r} not in local top 3"
        top = dict((p, v) for p, v in local["top_logprobs"][j])
        gaps.append(top[local["tokens"][j]] - top[served[j]])
    print(
        f"\ngreedy parity: {same}/{len(PARITY_PROMPTS)} identical; local log-prob gap between "
        f"the two candidates where they part: {[round(g, 3) for g in gaps]} nats; served vs "
        f"local log-prob of the same token: mean {sum(noise) / len(noise):.3f}, "
        f"max {max(noise):.3f} nats over {len(noise)} tokens"
    )
    assert same >= 2
    assert max(noise) > 0  # the backends do differ numerically (Q4_1 x Q8 vs fp32)
    assert all(g < 1.0 for g in gaps), gaps  # a near-tie: runner-up by under 1 nat


def test_greedy_served_f32_equals_local_exactly(llama_server_f32, real_teacher):
    """Serve the de-quantised weights and the greedy paths agree everywhere: the partings
    above come from the Q4_1 x Q8 arithmetic, not from the client, template or sampler."""
    model, tok = real_teacher
    gen = LocalGenerator(model, tok)
    params = {"sampling_temperature": 0, "max_tokens": 12, "mode": "completions"}
    params["top_logprobs"] = 1
    noise = []
    for i, text in enumerate(PARITY_PROMPTS):
        lp = _complete(llama_server_f32, text, 12)
        local = gen.generate(Prompt(id=str(i), text=text), 0, params)
        assert lp["tokens"] == local["tokens"], text
        noise += [
            abs(a - top[0][1])
            for a, top in zip(lp["token_logprobs"], local["top_logprobs"], strict=True)
        ]
    print(
        f"\nF32 server vs local: {len(PARITY_PROMPTS)}/{len(PARITY_PROMPTS)} identical; "
        f"log-prob difference max {max(noise):.2e} nats"
    )
    assert max(noise) < 0.01


def test_generate_through_faults_exactly_once_with_logprobs(llama_server, tmp_path):
    upstream = int(llama_server.rsplit(":", 1)[1])
    proxy = FaultProxy(upstream, fault_rate=0.2, stall_s=4.0, seed=3)
    try:
        prompts = tmp_path / "p.jsonl"
        rows = [{"id": f"p{i}", "prompt": t} for i, t in enumerate(PARITY_PROMPTS * 2)]
        for i, r in enumerate(rows):
            r["prompt"] = f"{r['prompt']} ({i})"
        prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / "gen"
        argv = ["generate", str(DEMO), f"generate.prompts={prompts}", f"generate.output_dir={out}"]
        argv += [f"generate.base_url={proxy.url}", "generate.backend=openai", "generate.n=2"]
        argv += ["generate.mode=completions", "generate.sampling_temperature=0.8"]
        argv += ["generate.max_tokens=6", "generate.top_logprobs=3", "generate.timeout_s=3"]
        argv += ["generate.max_retries=12", "generate.backoff_base_s=0.05"]
        argv += ["generate.max_concurrency=2", "generate.model=smollm2"]
        assert main(argv) == 0
        recs = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
        keys = [(r["prompt_id"], r["sample"]) for r in recs]
        assert sorted(keys) == sorted((f"p{i}", s) for i in range(len(rows)) for s in range(2))
        assert sum(proxy.faults.values()) >= 2
        for r in recs:
            n = r["usage"]["completion_tokens"]
            assert 1 <= n <= 6 and len(r["tokens"]) == len(r["top_logprobs"]) == n
            # top 3, plus the sampled token where it is not among them (as OpenAI does)
            assert all(1 <= len(t) <= 4 for t in r["top_logprobs"])
            assert r["logprob"] < 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["records"] == len(recs) and summary["completion_tokens"] > 0
        kept = [json.loads(x) for x in (out / "kept.jsonl").read_text().splitlines()]
        assert kept and all("teacher_top_logprobs" in k and "completion" in k for k in kept)
    finally:
        proxy.close()


def _kjv_prompts(n: int, offset: int) -> list[str]:
    from kdistill.data.kjv import kjv_chapters

    chapters = kjv_chapters()
    picks = [chapters[(offset + 13 * i) % len(chapters)] for i in range(n)]
    return [" ".join(c.split()[:10]) for c in picks]


def _agreement(student, tok, pairs: list[tuple[str, list[str]]]) -> float:
    """Share of the teacher's greedy tokens the student predicts (argmax, teacher-forced)."""
    from kdistill.data.completions import PieceMap

    pieces = PieceMap(tok)
    hit = total = 0
    student.eval()
    with torch.no_grad():
        for prompt, tokens in pairs:
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = [pieces.get(t) for t in tokens]
            if None in c:
                continue
            logits = student(input_ids=torch.tensor([p + c])).logits[0]
            pred = logits[len(p) - 1 : len(p) + len(c) - 1].argmax(-1)
            hit += int((pred == torch.tensor(c)).sum())
            total += len(c)
    return hit / total


def test_student_finetuned_on_served_generations_agrees_more(llama_server, real_teacher, tmp_path):
    from kdistill.models.loading import load_causal_lm
    from kdistill.models.student import build_student_from_teacher

    train_prompts, held_prompts = _kjv_prompts(64, 0), _kjv_prompts(16, 7)
    file = tmp_path / "prompts.jsonl"
    file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in train_prompts))
    gen_dir = tmp_path / "gen"
    argv = ["generate", str(DEMO), f"generate.prompts={file}", f"generate.output_dir={gen_dir}"]
    argv += [f"generate.base_url={llama_server}", "generate.backend=openai"]
    argv += ["generate.mode=completions", "generate.sampling_temperature=0"]
    argv += ["generate.max_tokens=24", "generate.top_logprobs=8", "generate.model=smollm2"]
    argv += ["generate.max_concurrency=2", "generate.extra_body={repeat_penalty: 1.0}"]
    assert main(argv) == 0
    held = [(p, _complete(llama_server, p, 24)["tokens"]) for p in held_prompts]

    teacher, tok = real_teacher
    before = _agreement(build_student_from_teacher(teacher, seed=0, every=3), tok, held)
    run = tmp_path / "run"
    argv = ["distill", str(DEMO), f"output_dir={run}", f"data.source={gen_dir / 'kept.jsonl'}"]
    argv += ["teacher.kind=recorded", "data.held_out_fraction=0.1", "data.block_size=64"]
    argv += ["training.max_steps=24", "training.per_device_batch_size=8"]
    argv += ["training.save_steps=100", "training.logging_steps=8", "training.warmup_steps=2"]
    argv += ["training.learning_rate=0.0005", *demo_as_tested()]  # the settings it was made at
    assert main(argv) == 0
    student, _ = load_causal_lm(str(run / "model"), frozen=True)
    after = _agreement(student, tok, held)
    # the same run as plain SFT on the generated text (hard labels only, no teacher loaded)
    sft_run = tmp_path / "sft"
    sft = [*argv, f"output_dir={sft_run}", "teacher.kind=none"]
    assert main(sft) == 0
    sft_after = _agreement(load_causal_lm(str(sft_run / "model"), frozen=True)[0], tok, held)
    teacher_self = _agreement(teacher, tok, held)
    log = [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]
    print(
        f"\nheld-out agreement with the served teacher's greedy tokens: student before "
        f"{before:.3f}; after 24 steps with the soft term from API logprobs {after:.3f}, "
        f"as plain SFT {sft_after:.3f} (local fp32 teacher itself {teacher_self:.3f}); "
        f"soft loss {log[0]['soft_loss']:.3f} -> {log[-1]['soft_loss']:.3f}"
    )
    assert all(math.isfinite(r["loss"]) and r["soft_loss"] > 0 for r in log)
    assert after > before + 0.03 and sft_after > before + 0.03


def test_served_scorer_f32_gives_the_local_teachers_log_probs_on_student_samples(
    llama_server_f32, real_teacher, tmp_path
):
    """The student samples; the F32 server scores prompt + sample (text in, echoed tokens
    checked); its top-k log-probs equal the local teacher's within 1e-2 nats; then one
    on-policy step learns from the server with no teacher in the training process."""
    from transformers import TrainingArguments

    from kdistill.models.sampling import sample_continuations, sampled_batch
    from kdistill.models.student import build_student_from_teacher
    from kdistill.teachers.base import Want
    from kdistill.teachers.scorer import ServedScorer
    from kdistill.teachers.served import OpenAICompatibleTeacher
    from kdistill.training.on_policy import OnPolicy
    from kdistill.training.step import KDSchedules
    from kdistill.training.trainer import KDTrainer

    teacher, tok = real_teacher
    student = build_student_from_teacher(teacher, every=3)
    prompts = [torch.tensor(tok(t)["input_ids"]) for t in PARITY_PROMPTS[:2]]
    eos = (tok.eos_token_id,)
    p_ids, p_mask, new = sample_continuations(
        student, prompts, max_new_tokens=24, pad_id=tok.pad_token_id, eos_ids=eos, seed=0
    )
    batch = sampled_batch(p_ids, p_mask, new, eos)
    client = OpenAICompatibleTeacher(llama_server_f32, "smollm2", mode="completions")
    scorer = ServedScorer(client, tok, vocab_size=len(tok), top_k=10)
    sig = scorer.signal(batch, want=Want())
    assert scorer.send == "text"  # llama-cpp-python's server takes no token-id prompts
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        local = torch.log_softmax(teacher(**inputs).logits[..., : len(tok)].float(), -1)
    sampled = batch["shift_labels"] != -100
    scored = sampled & sig.valid
    # the server tokenises the text itself: a fresh student's junk (" " + "ortunate") comes
    # back as " or" "tun" "ate", and after it the server's context is not the row's. Where the
    # two tokenisations still agree on everything before, the scores must be the local
    # teacher's on the same tokens
    same_context = torch.zeros_like(scored)
    for r in range(scored.shape[0]):
        ids = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
        canon = tok(tok.decode(ids), add_special_tokens=False)["input_ids"]
        agree = next((i for i, (a, b) in enumerate(zip(ids, canon)) if a != b), len(ids))
        start = int((~batch["attention_mask"][r].bool()).sum())
        same_context[r, start : start + agree] = True
    s = sig.sparse
    kept = (s.ids >= 0) & (scored & same_context).unsqueeze(-1)
    diff = (s.logprobs - local.gather(-1, s.ids.clamp_min(0))).abs()[kept]
    share = int(scored.sum()) / int(sampled.sum())
    print(
        f"\nserved scorer (F32) vs local on {int(sampled.sum())} sampled tokens: "
        f"{share:.1%} scored, {int((scored & same_context).sum())} with the row's own "
        f"context, top-10 log-prob difference there max {float(diff.max()):.2e} nats"
    )
    assert share >= 0.5 and int((scored & same_context).sum()) >= 20
    assert float(diff.max()) < 1e-2
    args = TrainingArguments(
        output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", max_steps=1,
        per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True,
        remove_unused_columns=False, learning_rate=1e-4,
    )  # fmt: skip
    rows = [{"input_ids": p, "labels": p.clone()} for p in prompts]
    from kdistill.data.lm import CausalCollator

    before = student.model.layers[0].mlp.up_proj.weight.clone()
    trainer = KDTrainer(
        model=student, args=args, train_dataset=rows, teacher=scorer,
        data_collator=CausalCollator(tok.pad_token_id), vocab_size=len(tok),
        schedules=KDSchedules.build(1.0, 1.0, 0.0),
        on_policy=OnPolicy(max_new_tokens=8, prompt_tokens=8), pad_token_id=tok.pad_token_id,
        eos_token_ids=eos,
    )  # fmt: skip
    trainer.train()
    assert trainer.targets_seen > 0
    assert not torch.equal(before, student.model.layers[0].mlp.up_proj.weight)


def test_exported_student_gguf_served_by_llama_cpp_gives_the_torch_greedy_text(
    real_teacher, tmp_path
):
    """`kdistill export --gguf f32` of a student pruned from the real teacher (16 layers, 896
    MLP neurons: explicit head_dim, untypical widths), served by the real llama.cpp server:
    the torch student's greedy tokens on 6 prompts, log-probs within 1e-2 nats."""
    from kdistill.models.student import build_student_from_teacher

    teacher, tok = real_teacher
    calib = [tok(p, return_tensors="pt").input_ids for p in PARITY_PROMPTS]
    student = build_student_from_teacher(
        teacher, layers=16, intermediate_size=896, calibration=calib
    ).eval()
    folder = tmp_path / "student"
    student.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "export"
    gguf = str(bundled_gguf_path("smollm2-135m"))
    argv = ["export", str(folder), "--out", str(out), "--no-hf", "--gguf", "f32"]
    assert main([*argv, "--tokenizer-gguf", gguf]) == 0
    for url in _serve(out / "student-f32.gguf", tmp_path / "server.log"):
        for prompt in PARITY_PROMPTS:
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                seq = student.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
                logits = student(input_ids=seq).logits[0, ids.shape[1] - 1 : -1]
            new = seq[0, ids.shape[1] :]
            ours = torch.log_softmax(logits.float(), -1).gather(1, new[:, None])[:, 0]
            got = _complete(url, prompt, 12, ignore_eos=True)
            assert "".join(got["tokens"]) == tok.decode(new), prompt
            diff = (torch.tensor(got["token_logprobs"]) - ours).abs().max().item()
            assert diff < 1e-2, (prompt, diff)
