"""A sweep of wrong inputs across every verb: each is one line on stderr naming the problem,
exit code 2, no traceback, and no pre-existing file changed (nothing half-written left)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from kdistill.cli.main import main
from tests.conftest import tiny_overrides
from tests.unit.test_folders import tree_hashes

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "src/kdistill/configs/demo.yaml")


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_teacher_dir, tiny_text_file) -> dict[str, Path]:
    """A folder of broken inputs, built once."""
    root = tmp_path_factory.mktemp("bad")
    f = {}

    def write(name: str, data: str | bytes) -> Path:
        p = root / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        f[name] = p
        return p

    write("a_file", "not a folder")
    write("latin1.txt", "caf\xe9 au lait".encode("latin-1"))
    write("empty.txt", "\n\n")
    write("broken.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    write("empty.jsonl", "")
    write("string_messages.jsonl", json.dumps({"messages": ["hi", "there"]}) + "\n")
    write("user_last.jsonl", json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    write("number_text.jsonl", json.dumps({"text": 42}) + "\n")
    write("no_field.jsonl", json.dumps({"body": "x"}) + "\n")
    write("text.parquet", "this is text, not parquet")
    write("data.csv", "a,b\n1,2\n")
    write("list.json", json.dumps([1, 2]))
    write("results_list.json", json.dumps([{"perplexity": 3}]))
    write("results_bad.json", "{not json")
    write("prompts_bad.jsonl", '{"prompt": "a"}\nnot json\n')
    write("prompts_empty.jsonl", "\n")
    write("prompts_strings.jsonl", json.dumps({"messages": ["hello"]}) + "\n")
    write("prompts_number.jsonl", json.dumps({"prompt": 7}) + "\n")
    write("prompts_ok.jsonl", json.dumps({"prompt": "q", "answer": "a"}) + "\n")
    write("not_gguf.gguf", "plain text")
    (root / "dir.txt").mkdir()
    f["dir.txt"] = root / "dir.txt"
    # model folders: no weights; broken config.json; truncated safetensors
    no_w = root / "no_weights"
    no_w.mkdir()
    shutil.copy(tiny_teacher_dir / "config.json", no_w)
    f["no_weights"] = no_w
    broken = root / "broken_config"
    shutil.copytree(tiny_teacher_dir, broken)
    (broken / "config.json").write_text("{ this is not json")
    f["broken_config"] = broken
    trunc = root / "truncated"
    shutil.copytree(tiny_teacher_dir, trunc)
    w = trunc / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    f["truncated"] = trunc
    hdr = root / "bad_header"
    shutil.copytree(tiny_teacher_dir, hdr)
    (hdr / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    f["bad_header"] = hdr
    f["teacher"] = tiny_teacher_dir
    f["text"] = tiny_text_file
    return f


def _distill(f, out: Path, **extra) -> list[str]:
    return ["distill", DEMO, *tiny_overrides(f["teacher"], f["text"], out, **extra)]


def _generate(f, out: Path, **extra) -> list[str]:
    base = {
        "generate.prompts": str(f["prompts_ok.jsonl"]),
        "generate.output_dir": str(out),
        "generate.backend": "openai",
        "generate.base_url": "http://127.0.0.1:9",
    }
    base.update(extra)
    return ["generate", DEMO, *[f"{k}={v}" for k, v in base.items()]]


def _eval(f, *extra) -> list[str]:
    return ["eval", "--teacher", f["teacher"], "--model", f"s={f['teacher']}", *extra]


# (case id, argv builder (bad files, a fresh output path) -> argv, text the error must contain)
CASES = [
    ("no-such-verb", lambda f, o: ["nope"], "No such command"),
    ("unknown-option", lambda f, o: ["distill", DEMO, "--bogus"], "No such option"),
    ("missing-config", lambda f, o: ["distill"], "Missing argument"),
    ("config-not-found", lambda f, o: ["distill", str(o / "none.yaml")], "not found"),
    ("config-is-list", lambda f, o: ["distill", str(f["list.json"])], "must be a mapping"),
    ("override-syntax", lambda f, o: ["distill", DEMO, "training.max_steps"], "key.sub=value"),
    ("unknown-key", lambda f, o: ["distill", DEMO, "training.max_step=3"], "max_steps"),
    ("lr-inf", lambda f, o: _distill(f, o, **{"training.learning_rate": ".inf"}), "finite"),
    ("lr-nan", lambda f, o: _distill(f, o, **{"training.learning_rate": ".nan"}), "finite"),
    ("temperature-0", lambda f, o: _distill(f, o, **{"distill.kd_temperature": 0}), "> 0"),
    ("output-empty", lambda f, o: _distill(f, ""), "empty"),
    ("output-dot", lambda f, o: _distill(f, "."), "working directory"),
    ("output-root", lambda f, o: _distill(f, "/"), "root of the file system"),
    ("output-home", lambda f, o: _distill(f, "~/"), "home folder"),
    ("output-is-file", lambda f, o: _distill(f, f["a_file"]), "is a file"),
    ("output-under-file", lambda f, o: _distill(f, f["a_file"] / "run"), "under the file"),
    ("teacher-missing", lambda f, o: _distill(f, o, **{"teacher.model": o / "x"}), "not found"),
    (
        "teacher-no-weights",
        lambda f, o: _distill(f, o, **{"teacher.model": f["no_weights"]}),
        "no weights",
    ),
    (
        "teacher-broken-config",
        lambda f, o: _distill(f, o, **{"teacher.model": f["broken_config"]}),
        "not a valid model config",
    ),
    (
        "teacher-truncated",
        lambda f, o: _distill(f, o, **{"teacher.model": f["truncated"]}),
        "truncated",
    ),
    (
        "teacher-bad-header",
        lambda f, o: _distill(f, o, **{"teacher.model": f["bad_header"]}),
        "not a readable safetensors",
    ),
    (
        "teacher-not-gguf",
        lambda f, o: _distill(f, o, **{"teacher.model": f["not_gguf.gguf"]}),
        "not a GGUF file",
    ),
    ("data-missing", lambda f, o: _distill(f, o, **{"data.source": o / "x.txt"}), "not found"),
    (
        "data-not-utf8",
        lambda f, o: _distill(f, o, **{"data.source": f["latin1.txt"]}),
        "not UTF-8",
    ),
    ("data-empty-txt", lambda f, o: _distill(f, o, **{"data.source": f["empty.txt"]}), "empty"),
    ("data-folder", lambda f, o: _distill(f, o, **{"data.source": f["dir.txt"]}), "is a folder"),
    (
        "data-bad-jsonl",
        lambda f, o: _distill(f, o, **{"data.source": f["broken.jsonl"]}),
        "line 2: not valid JSON",
    ),
    (
        "data-empty-jsonl",
        lambda f, o: _distill(f, o, **{"data.source": f["empty.jsonl"]}),
        "no records",
    ),
    (
        "data-string-messages",
        lambda f, o: _distill(f, o, **{"data.source": f["string_messages.jsonl"]}),
        "'messages' must be a list",
    ),
    (
        "data-chat-ends-with-user",
        lambda f, o: _distill(f, o, **{"data.source": f["user_last.jsonl"]}),
        "assistant's reply",
    ),
    (
        "data-number-text",
        lambda f, o: _distill(f, o, **{"data.source": f["number_text.jsonl"]}),
        "must be text",
    ),
    (
        "data-no-text-field",
        lambda f, o: _distill(f, o, **{"data.source": f["no_field.jsonl"]}),
        "data.text_field",
    ),
    (
        "data-parquet-holding-text",
        lambda f, o: _distill(f, o, **{"data.source": f["text.parquet"]}),
        "not a readable Parquet",
    ),
    (
        "data-csv",
        lambda f, o: _distill(f, o, **{"data.source": f["data.csv"]}),
        "unsupported suffix",
    ),
    (
        "training-extra-unknown",
        lambda f, o: _distill(f, o, **{"training.extra": "{gradient_checkpointin: true}"}),
        "did you mean 'gradient_checkpointing'",
    ),
    (
        "store-missing",
        lambda f, o: _distill(f, o, **{"teacher.kind": "store", "teacher.path": o / "nostore"}),
        "no manifest.json",
    ),
    (
        "old-key-teacher-cache",
        lambda f, o: _distill(f, o, **{"teacher.cache": o / "s"}),
        "teacher.cache is gone; use teacher.kind=store with teacher.path",
    ),
    (
        "old-key-baseline",
        lambda f, o: _distill(f, o, **{"distill.baseline": "true"}),
        "distill.baseline is gone; use teacher.kind=none",
    ),
    (
        "old-key-teacher-logprobs",
        lambda f, o: _distill(f, o, **{"data.teacher_logprobs": "true"}),
        "data.teacher_logprobs is gone; use teacher.kind=recorded",
    ),
    (
        "teacher-kind-unknown",
        lambda f, o: _distill(f, o, **{"teacher.kind": "oracle"}),
        "unknown teacher.kind 'oracle'",
    ),
    (
        "store-without-path",
        lambda f, o: _distill(f, o, **{"teacher.kind": "store"}),
        "teacher.path: Field required",
    ),
    (
        "cut-from-missing-model",
        lambda f, o: _distill(
            f, o, **{"student.from_teacher": f"{{model: {o / 'x'}, keep_layers: [0]}}"}
        ),
        "not found",
    ),
    (
        "recorded-without-logprobs",
        lambda f, o: _distill(f, o, **{"teacher.kind": "recorded"}),
        "needs a kept.jsonl",
    ),
    ("train-teacher-output-dot", lambda f, o: ["train-teacher", DEMO, "output_dir=."], "working"),
    (
        "generate-prompts-missing",
        lambda f, o: _generate(f, o, **{"generate.prompts": o / "none.jsonl"}),
        "not found",
    ),
    (
        "generate-prompts-bad-json",
        lambda f, o: _generate(f, o, **{"generate.prompts": f["prompts_bad.jsonl"]}),
        ":2: not valid JSON",
    ),
    (
        "generate-prompts-empty",
        lambda f, o: _generate(f, o, **{"generate.prompts": f["prompts_empty.jsonl"]}),
        "no prompts",
    ),
    (
        "generate-messages-strings",
        lambda f, o: _generate(f, o, **{"generate.prompts": f["prompts_strings.jsonl"]}),
        "'messages' must be a list",
    ),
    (
        "generate-prompt-number",
        lambda f, o: _generate(f, o, **{"generate.prompts": f["prompts_number.jsonl"]}),
        "'prompt' must be text",
    ),
    (
        "generate-bad-regex",
        lambda f, o: _generate(
            f, o, **{"generate.filters.verify": "true", "generate.filters.answer_regex": "'(x'"}
        ),
        "not a valid regex",
    ),
    (
        "generate-output-is-file",
        lambda f, o: _generate(f, f["a_file"]),
        "is a file",
    ),
    ("generate-output-dot", lambda f, o: _generate(f, "."), "working directory"),
    (
        "cache-dir-is-file",
        lambda f, o: ["cache", DEMO, f"cache.dir={f['a_file']}", f"teacher.model={f['teacher']}"],
        "is a file",
    ),
    ("cache-plan-no-config", lambda f, o: ["cache", "plan"], "usage: kdistill cache plan"),
    (
        "cache-teacher-missing",
        lambda f, o: ["cache", DEMO, f"cache.dir={o / 's'}", f"teacher.model={o / 'x'}"],
        "not found",
    ),
    (
        "eval-model-no-equals",
        lambda f, o: ["eval", "--model", "student"],
        "use NAME=SPEC",
    ),
    (
        "eval-model-missing",
        lambda f, o: ["eval", "--teacher", str(f["teacher"]), "--model", f"s={o / 'x'}"],
        "not found",
    ),
    ("eval-out-is-folder", lambda f, o: _eval(f, "--out", f["dir.txt"]), "is a folder"),
    (
        "eval-data-not-utf8",
        lambda f, o: _eval(f, "--data", f["latin1.txt"], "--out", o / "r.json"),
        "not UTF-8",
    ),
    ("report-missing", lambda f, o: ["report", str(o / "none.json")], "not found"),
    ("report-json-list", lambda f, o: ["report", str(f["results_list.json"])], "JSON object"),
    ("report-not-json", lambda f, o: ["report", str(f["results_bad.json"])], "not a results"),
    ("inspect-empty-prompt", lambda f, o: ["inspect", "--prompt", "  "], "--prompt is empty"),
    ("inspect-temperatures", lambda f, o: ["inspect", "--temperatures", "a,b"], "numbers"),
    ("inspect-temperature-0", lambda f, o: ["inspect", "--temperatures", "0"], "> 0"),
    (
        "inspect-model-missing",
        lambda f, o: ["inspect", "--model", str(o / "x"), "--out", str(o / "i")],
        "not found",
    ),
    (
        "inspect-out-is-file",
        lambda f, o: ["inspect", "--model", str(f["teacher"]), "--out", str(f["a_file"])],
        "is a file",
    ),
    (
        "datacheck-suffix",
        lambda f, o: [
            "datacheck",
            "--model",
            str(f["teacher"]),
            "--distill-data",
            "kjv:middle",
            "--production-data",
            str(f["text"]),
        ],
        ":train or :heldout",
    ),
    ("demo-output-dot", lambda f, o: ["demo", "--output-dir", "."], "working directory"),
    ("demo-steps-0", lambda f, o: ["demo", "--max-steps", "0"], "max-steps"),
]


@pytest.mark.parametrize("case, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_changed(
    case, argv, needle, bad, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("the user's file")
    monkeypatch.chdir(work)
    out = tmp_path / "out"
    watched = [bad["a_file"].parent, work]
    before = [tree_hashes(w) for w in watched]
    rc = main([str(a) for a in argv(bad, out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("kdistill: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert [tree_hashes(w) for w in watched] == before
    assert not out.exists() or not any(out.rglob("*.yaml")), "a config was written"
