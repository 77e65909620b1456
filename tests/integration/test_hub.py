"""Hub model and data set ids, resolved offline from a pre-populated Hugging Face cache
under a socket guard (any network attempt fails the test)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from kdistill.models.hub import HubModelError
from kdistill.models.identity import local_model_identity
from kdistill.models.loading import resolve_model_path
from tests.conftest import tiny_overrides

REPO_ID = "kdistill-test/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")


@pytest.fixture
def hub_cache(tmp_path, tiny_teacher_dir, monkeypatch):
    """A hub cache holding one snapshot of the tiny teacher; offline; no sockets."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(tiny_teacher_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return repo


def test_a_hub_id_resolves_to_its_cached_snapshot_with_the_commit_in_the_identity(hub_cache):
    folder, gguf = resolve_model_path(REPO_ID)
    assert gguf is None and folder == hub_cache / "snapshots" / COMMIT
    assert resolve_model_path(f"{REPO_ID}@{COMMIT}")[0] == folder
    ident = local_model_identity(REPO_ID)
    assert ident["hub_commit"] == COMMIT and ident["name"] == REPO_ID


def test_distill_from_a_hub_teacher_offline(hub_cache, tiny_text_file, tmp_path):
    from kdistill.cli.main import main

    out = tmp_path / "run"
    over = tiny_overrides(REPO_ID, tiny_text_file, out, **{"training.max_steps": 1})
    assert main(["distill", DEMO, *over]) == 0
    assert (out / "model" / "model.safetensors").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["teacher"]["model"] == REPO_ID


def test_an_id_neither_cached_nor_reachable_is_one_line(
    hub_cache, tiny_text_file, tmp_path, capsys
):
    from kdistill.cli.main import main

    with pytest.raises(HubModelError, match="HF_HUB_OFFLINE"):
        resolve_model_path("kdistill-test/not-cached")
    over = tiny_overrides("kdistill-test/not-cached", tiny_text_file, tmp_path / "r")
    assert main(["distill", DEMO, *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kdistill-test/not-cached" in err[0] and "HF_HUB_OFFLINE" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_local_folder_of_the_same_name_wins(
    hub_cache, tiny_teacher_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / REPO_ID
    shutil.copytree(tiny_teacher_dir, local)
    with caplog.at_level("INFO"):
        folder, _ = resolve_model_path(REPO_ID)
    assert folder.resolve() == local.resolve()
    assert "local folder" in caplog.text


def test_distill_on_a_hub_data_set_offline(hub_cache, tmp_path):
    """A hub data set (parquet under a made-up id) from the cache: its train files only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdistill.cli.main import main
    from kdistill.data.records import load_records
    from tests.conftest import TINY_TEXT

    cache = hub_cache.parent
    snap = cache / "datasets--kdistill-test--tiny-text" / "snapshots" / COMMIT
    (snap / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": TINY_TEXT}), snap / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": ["held back"] * 4}), snap / "data" / "test-00000.parquet")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(COMMIT)
    records = load_records("kdistill-test/tiny-text")
    assert records == TINY_TEXT  # the train split's file, not the test one
    out = tmp_path / "run"
    over = tiny_overrides(REPO_ID, Path("unused"), out, **{"training.max_steps": 1})
    over = [
        o if not o.startswith("data.source=") else "data.source=kdistill-test/tiny-text"
        for o in over
    ]
    assert main(["distill", DEMO, *over]) == 0
    assert (out / "model" / "model.safetensors").is_file()


SUBSETS_README = """---
configs:
- config_name: plain
  data_files:
  - split: train
    path: plain/train-*.parquet
  - split: validation
    path: plain/validation-*.parquet
- config_name: chat
  data_files:
  - split: train
    path: chat/train-*.parquet
---
# a made-up data set with two subsets
"""


def _subsets_snapshot(hub_cache) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import TINY_TEXT

    repo = hub_cache.parent / "datasets--kdistill-test--two-subsets"
    snap = repo / "snapshots" / COMMIT
    for sub in ("plain", "chat"):
        (snap / sub).mkdir(parents=True)
    (snap / "README.md").write_text(SUBSETS_README)
    pq.write_table(pa.table({"text": TINY_TEXT}), snap / "plain" / "train-00000.parquet")
    pq.write_table(
        pa.table({"text": ["held back one", "held back two"]}),
        snap / "plain" / "validation-00000.parquet",
    )
    chats = [
        [{"role": "user", "content": t.split()[0]}, {"role": "assistant", "content": t}]
        for t in TINY_TEXT[:20]
    ]
    pq.write_table(pa.table({"messages": chats}), snap / "chat" / "train-00000.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def test_hub_data_set_subsets_and_splits_offline(hub_cache, tmp_path, capsys):
    from kdistill.cli.main import main
    from kdistill.data.records import load_records
    from kdistill.errors import InputError
    from tests.conftest import TINY_TEXT

    _subsets_snapshot(hub_cache)
    ident = "kdistill-test/two-subsets"
    assert load_records(ident, subset="plain") == TINY_TEXT
    assert load_records(ident, subset="plain", split="validation") == [
        "held back one",
        "held back two",
    ]
    chats = load_records(ident, subset="chat")
    assert len(chats) == 20 and chats[0][1]["role"] == "assistant"
    with pytest.raises(InputError, match="subset 'nope'"):
        load_records(ident, subset="nope")
    with pytest.raises(InputError, match="split 'test'"):
        load_records(ident, subset="plain", split="test")
    with pytest.raises(InputError, match="is not one"):
        load_records("kjv", split="validation")
    # end to end on the chat subset, through the CLI, under the socket guard
    out = tmp_path / "run"
    over = tiny_overrides(REPO_ID, Path("unused"), out, **{"training.max_steps": 1})
    over = [o for o in over if not o.startswith("data.source=")]
    over += [f"data.source={ident}", "data.subset=chat", "data.block_size=32"]
    assert main(["distill", DEMO, *over]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["subset"] == "chat" and saved["data"]["split"] == "train"
    bad = tmp_path / "bad"
    over = [o.replace(str(out), str(bad)) for o in over] + ["data.split=test"]
    capsys.readouterr()
    assert main(["distill", DEMO, *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split 'test'" in err[0] and not bad.exists()
