"""Sequence-level distillation: generation exactly once under faults, resume, filters."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdistill.cli.main import main
from kdistill.config.loader import load_config
from kdistill.pipeline.generate import run_generate
from kdistill.teachers.served import sample_seed
from tests.conftest import demo_as_tested
from tests.fakes import FakeOpenAIServer, FaultProxy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src/kdistill/configs/demo.yaml"


def _prompts(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n" for i in range(n))
    )
    return path


def _overrides(prompts: Path, out: Path, url: str, **extra) -> list[str]:
    base = {
        "generate.prompts": str(prompts),
        "generate.output_dir": str(out),
        "generate.backend": "openai",
        "generate.base_url": url,
        "generate.n": 2,
        "generate.timeout_s": 0.5,
        "generate.max_retries": 12,
        "generate.backoff_base_s": 0.02,
        "generate.max_concurrency": 8,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _keys(out: Path) -> list[tuple[str, int]]:
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    return [(r["prompt_id"], r["sample"]) for r in rows]


@pytest.fixture()
def server():
    s = FakeOpenAIServer()
    yield s
    s.close()


def test_faults_exactly_once_then_kill_and_resume(server, tmp_path):
    proxy = FaultProxy(server.port, fault_rate=0.2, stall_s=0.8, seed=1)
    try:
        prompts = _prompts(tmp_path / "p.jsonl", 200)
        out = tmp_path / "gen"
        argv = [
            sys.executable,
            "-m",
            "kdistill.cli.main",
            "generate",
            str(DEMO),
            *_overrides(prompts, out, proxy.url),
        ]
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        store = out / "generations.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if store.exists() and store.read_text().count("\n") >= 120:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "finished before the kill"
        killed_at = time.time()
        finished = set(_keys(out))
        assert 120 <= len(finished) < 400

        summary = run_generate(load_config(DEMO, _overrides(prompts, out, proxy.url)))
        keys = _keys(out)
        assert len(keys) == len(set(keys)) == 400  # every (prompt, sample) exactly once
        assert set(keys) == {(f"p{i}", s) for i in range(200) for s in range(2)}
        assert summary["already_done"] == len(finished)
        # no request was repeated for work finished before the kill
        for pid, sample in finished:
            key = (f"question {pid[1:]}", sample_seed(pid, sample))
            assert proxy.requests[key], key
            assert all(t < killed_at for t in proxy.requests[key]), (pid, sample)
        # and the unfinished work was requested after it
        missing = {(f"p{i}", s) for i in range(200) for s in range(2)} - finished
        assert all(
            any(t > killed_at for t in proxy.requests[(f"question {p[1:]}", sample_seed(p, s))])
            for p, s in missing
        )
        assert sum(proxy.faults.values()) > 40  # ~20% of >400 requests were faulty
        assert set(proxy.faults) == {"500", "429", "stall", "drop"}
    finally:
        proxy.close()


def test_served_records_have_logprobs_shares_and_training_data(server, tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl", 5)
    out = tmp_path / "g"
    summary = run_generate(
        load_config(
            DEMO,
            _overrides(
                prompts,
                out,
                server.url,
                **{"generate.top_logprobs": 2, "generate.cost_per_1k_completion_tokens": 1.0},
            ),
        )
    )
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert all(r["logprob"] < 0 and len(r["top_logprobs"][0]) == 2 for r in rows)
    assert summary["completion_tokens"] > 0 and summary["cost"] > 0
    kept = [json.loads(x) for x in (out / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == 10 and kept[0]["messages"][-1]["role"] == "assistant"
    # normalised sequence probabilities across each prompt's 2 samples, by hand
    lp = {(r["prompt_id"], r["sample"]): r["logprob"] for r in rows}
    for k in kept:
        a, b = lp[(k["prompt_id"], 0)], lp[(k["prompt_id"], 1)]
        mine = lp[(k["prompt_id"], k["sample"])]
        assert k["sequence_share"] == pytest.approx(math.exp(mine) / (math.exp(a) + math.exp(b)))
        assert k["logprob"] == mine
    assert all(len(k["teacher_tokens"]) == len(k["teacher_top_logprobs"]) for k in kept)


def test_bad_key_is_one_line_and_keeps_finished_work(tmp_path, capsys):
    server = FakeOpenAIServer(api_key="right")
    try:
        prompts = _prompts(tmp_path / "p.jsonl", 4)
        out = tmp_path / "g"
        os.environ["KD_TEST_KEY"] = "right"
        ok = _overrides(
            prompts, out, server.url, **{"generate.api_key_env": "KD_TEST_KEY", "generate.n": 1}
        )
        assert main(["generate", str(DEMO), *ok]) == 0
        os.environ["KD_TEST_KEY"] = "wrong"
        more = _overrides(prompts, out, server.url, **{"generate.api_key_env": "KD_TEST_KEY"})
        assert main(["generate", str(DEMO), *more]) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("kdistill:")]
        assert len(err) == 1 and "refused the API key (HTTP 401)" in err[0]
        assert len(_keys(out)) == 4  # nothing already generated was lost
    finally:
        server.close()
        os.environ.pop("KD_TEST_KEY", None)


def test_unreachable_server_is_one_line(tmp_path, capsys):
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    argv = [
        "generate",
        str(DEMO),
        *_overrides(prompts, tmp_path / "g", "http://127.0.0.1:9", **{"generate.max_retries": 2}),
    ]
    assert main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("kdistill:")]
    assert len(err) == 1 and "failed 3 times" in err[0] and "connection error" in err[0]


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"id": 1, "prompt": "a"}\n{not json}\n', "p.jsonl:2: not valid JSON"),
        ('{"id": 1, "text": "a"}\n', "needs a 'prompt'"),
        ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "duplicate id"),
        ('{"messages": "hello"}\n', "'messages' must be a list"),
    ],
)
def test_malformed_prompt_files(tmp_path, capsys, content, message):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    argv = ["generate", str(DEMO), *_overrides(p, tmp_path / "g", "http://127.0.0.1:9")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_local_backend_then_train_on_generations(tiny_teacher_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n"
            for t in [
                "And God said",
                "In the beginning",
                "And the earth",
                "And God saw",
                "And the evening",
                "Let there be",
            ]
        )
    )
    out = tmp_path / "gen"
    gen = [
        f"teacher.model={tiny_teacher_dir}",
        f"generate.prompts={prompts}",
        f"generate.output_dir={out}",
        "generate.n=2",
        "generate.max_tokens=8",
        "generate.top_logprobs=3",
    ]
    assert main(["generate", str(DEMO), *gen]) == 0
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["logprob"] <= 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_now"] == 12
    # re-run: nothing to do
    assert main(["generate", str(DEMO), *gen]) == 0
    assert json.loads((out / "summary.json").read_text())["generated_now"] == 0
    run = tmp_path / "sft"
    train = [
        f"output_dir={run}",
        f"teacher.model={tiny_teacher_dir}",
        "student.from_teacher={keep_layers: [0, 3]}",
        f"data.source={out / 'kept.jsonl'}",
        "data.block_size=64",
        "data.held_out_fraction=0.2",
        "training.max_steps=3",
        "training.per_device_batch_size=2",
        "training.save_steps=10",
        *demo_as_tested(),
    ]
    assert main(["distill", str(DEMO), *train]) == 0
    assert (run / "model" / "model.safetensors").is_file()
