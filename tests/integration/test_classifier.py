"""Fashion-MNIST: CNN teacher via train-teacher, MLP student via distill, same CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill.cli.main import main
from kdistill.data.fashion_mnist import ROOT, load_split
from kdistill.models.classifiers import build_classifier, load_classifier, save_classifier

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "src/kdistill/configs"
needs_data = pytest.mark.skipif(not ROOT.is_dir(), reason="apt-get install dataset-fashion-mnist")


@needs_data
def test_idx_reader():
    x, y = load_split("test", limit=100)
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert y.dtype == torch.long and int(y.min()) >= 0 and int(y.max()) <= 9
    full_x, full_y = load_split("train")
    assert full_x.shape[0] == 60000 and torch.bincount(full_y).tolist() == [6000] * 10


def test_missing_data_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_split("train", root=tmp_path)


def test_classifier_save_load_round_trip(tmp_path):
    model = build_classifier("cnn", channels=[4, 8])
    spec = {"arch": "cnn", "channels": [4, 8], "hidden": [16], "n_classes": 10}
    save_classifier(model, spec, tmp_path / "m")
    loaded, got = load_classifier(tmp_path / "m")
    x = torch.rand(2, 1, 28, 28)
    assert got == spec and torch.equal(loaded(pixel_values=x), model(pixel_values=x))


@needs_data
def test_fashion_mnist_teacher_then_student_through_cli(tmp_path, capsys):
    small = [
        "data.max_train_examples=3000",
        "data.max_eval_tokens=1000",
        "data.validation_examples=500",
        "training.max_steps=60",
        "training.logging_steps=20",
        "training.save_steps=30",
    ]
    t_dir = tmp_path / "teacher"
    # the teacher with dropout, shifted images and 500 validation images set aside
    regular = ["teacher.dropout=0.2", "data.jitter=1"]
    argv = ["train-teacher", str(CONFIGS / "fmnist_teacher.yaml"), f"output_dir={t_dir}"]
    assert main([*argv, *small, *regular]) == 0
    teacher = json.loads((t_dir / "results.json").read_text())["teacher"]
    assert teacher["accuracy"] > 0.6  # chance is 0.1
    assert teacher["validation_examples"] == 500 and teacher["validation_accuracy"] > 0.5
    assert json.loads((t_dir / "model" / "classifier.json").read_text())["dropout"] == 0.2
    s_dir = tmp_path / "student"
    distill = [
        "distill",
        str(CONFIGS / "fmnist_distill.yaml"),
        f"output_dir={s_dir}",
        f"teacher.model={t_dir / 'model'}",
        "student.hidden=[64]",
        *small,
    ]
    assert main(distill) == 0
    assert (s_dir / "model" / "kdistill-done").is_file()
    res = json.loads((s_dir / "results.json").read_text())
    assert res["student"]["accuracy"] > 0.5
    assert res["student"]["params"] < res["teacher"]["params"]
    assert 0 < res["student"]["top1_agreement"] <= 1 and res["student"]["kl_to_teacher"] > 0
    log = [json.loads(x) for x in (s_dir / "kd_log.jsonl").read_text().splitlines()]
    assert all(r["soft_loss"] > 0 and r["kd_temperature"] == 4.0 for r in log)
    capsys.readouterr()
    assert main(distill) == 0  # a finished run is not retrained
    assert "already complete" in capsys.readouterr().out
    b_dir = tmp_path / "baseline"
    # the baseline also without class 3 in its training images (Hinton's omitted class)
    baseline = [*distill, f"output_dir={b_dir}", "teacher.kind=none", "data.omit_class=3"]
    assert main(baseline) == 0
    base = json.loads((b_dir / "results.json").read_text())
    assert set(base) >= {"teacher", "baseline"} and base["baseline"]["accuracy"] > 0.3
    omitted = base["baseline"]
    assert omitted["omitted_class"] == 3 and omitted["test_class_accuracy"] <= 0.1
    assert omitted["per_class_accuracy"][3] == omitted["test_class_accuracy"]
    assert omitted["test_class_accuracy_after_bias"] >= omitted["test_class_accuracy"]
    log = [json.loads(x) for x in (b_dir / "kd_log.jsonl").read_text().splitlines()]
    assert all(r["soft_loss"] == 0 for r in log)  # no teacher in the loss
    # one `kdistill eval` run measures all three side by side, then the report renders it
    out = tmp_path / "eval" / "results.json"
    argv = ["eval", "--teacher", str(t_dir), "--model", f"student={s_dir}"]
    argv += ["--model", f"baseline={b_dir / 'model'}", "--max-eval-tokens", "500"]
    assert main([*argv, "--out", str(out)]) == 0
    ev = json.loads(out.read_text())
    derived = ev.pop("derived")
    assert ev.pop("setup")["pairs"] == [["student", "baseline"]]
    assert list(ev) == ["teacher", "student", "baseline"]
    gap = ev["student"]["accuracy"] - ev["baseline"]["accuracy"]
    assert derived["student_minus_baseline_accuracy"] == pytest.approx(gap)
    assert derived["teacher_helped"] == (gap > 0)
    assert derived["student_acc_retention"] == pytest.approx(ev["student"]["accuracy_retention"])
    assert ev["student"]["accuracy"] == pytest.approx(res["student"]["accuracy"], abs=0.08)
    assert ev["teacher"]["top1_agreement"] == 1.0 and ev["teacher"]["kl_to_teacher"] < 1e-6
    for name, r in ev.items():
        assert r["eval_examples"] == 500 and len(r["per_class_accuracy"]) == 10
        assert 0 < r["latency_p50_s"] <= r["latency_p95_s"]
        assert r["peak_memory_bytes"] > r["weight_bytes"] > 0
        folder = {"teacher": t_dir, "student": s_dir, "baseline": b_dir}[name] / "model"
        assert r["size_bytes"] == (folder / "model.safetensors").stat().st_size
    assert ev["student"]["accuracy_retention"] == pytest.approx(
        ev["student"]["accuracy"] / ev["teacher"]["accuracy"]
    )
    assert ev["student"]["peak_memory_bytes"] < ev["teacher"]["peak_memory_bytes"]
    assert main(["report", str(out)]) == 0
    assert "peak memory" in (out.parent / "report.md").read_text()


def test_eval_refuses_mixed_kinds_and_wrong_data(tmp_path, tiny_teacher_dir, capsys):
    model = build_classifier("mlp", hidden=[8])
    save_classifier(model, {"arch": "mlp", "hidden": [8], "n_classes": 10}, tmp_path / "c")
    out = tmp_path / "r.json"
    mixed = ["eval", "--teacher", str(tiny_teacher_dir), "--model", f"c={tmp_path / 'c'}"]
    assert main([*mixed, "--out", str(out)]) == 2
    assert "mix classifier folders and language models" in capsys.readouterr().err
    wrong = ["eval", "--teacher", str(tmp_path / "c"), "--model", f"c={tmp_path / 'c'}"]
    assert main([*wrong, "--data", "kjv", "--out", str(out)]) == 2
    assert "evaluated on fashion-mnist" in capsys.readouterr().err
    assert not out.exists()


@needs_data
def test_validation_images_are_set_aside_the_same_for_every_seed():
    from kdistill.data.fashion_mnist import split_train

    t0, v0 = split_train(500, 2000, seed=0)
    t1, v1 = split_train(500, 2000, seed=1)
    assert len(t0) == 2000 and len(v0) == 500
    assert torch.equal(v0.images, v1.images) and torch.equal(v0.labels, v1.labels)
    assert not torch.equal(t0.images, t1.images)  # the training subset follows the seed
    # no validation image is a training image; each keeps its index in the full split
    assert not set(v0.source_index.tolist()) & set(t0.source_index.tolist())
    full_x, _ = load_split("train")
    assert torch.equal(full_x[t0.source_index[:50]], t0.images[:50])
    assert t0[7]["example_index"] == int(t0.source_index[7])
    # without a validation split the subset is load_split's own
    assert torch.equal(
        split_train(0, 300, seed=4)[0].images, load_split("train", limit=300, seed=4)[0]
    )
    with pytest.raises(ValueError, match="leaves no training image"):
        split_train(60000, None, seed=0)


def test_jitter_shifts_each_image_within_bounds_and_keeps_the_batch():
    from kdistill.data.fashion_mnist import ImageCollator, jitter_images

    x = torch.zeros(6, 1, 28, 28)
    x[:, 0, 10:14, 12:15] = torch.arange(1, 13, dtype=torch.float32).view(4, 3)
    g = torch.Generator().manual_seed(0)
    y = jitter_images(x, 2, g)
    moved = 0
    for i in range(6):  # the same patch, somewhere within 2 pixels
        nz = y[i, 0].nonzero()
        dy, dx = int(nz[:, 0].min()) - 10, int(nz[:, 1].min()) - 12
        assert abs(dy) <= 2 and abs(dx) <= 2
        assert torch.equal(y[i, 0, 10 + dy : 14 + dy, 12 + dx : 15 + dx], x[i, 0, 10:14, 12:15])
        moved += (dy, dx) != (0, 0)
    assert moved >= 4
    items = [
        {"pixel_values": x[i], "labels": torch.tensor(i), "example_index": 7 + i} for i in range(3)
    ]
    batch = ImageCollator(0)(items)
    assert torch.equal(batch["pixel_values"], x[:3])  # no jitter: untouched
    assert batch["example_index"].tolist() == [7, 8, 9]


def test_precomputed_teacher_looks_up_the_models_own_logits():
    from kdistill.eval.classifier_runner import predict
    from kdistill.teachers.base import Want
    from kdistill.teachers.precomputed import PrecomputedTeacher

    torch.manual_seed(0)
    model = build_classifier("cnn", channels=[4, 8], dropout=0.5)
    images = torch.rand(40, 1, 28, 28)
    teacher = PrecomputedTeacher(predict(model, images)[0])
    idx = torch.tensor([3, 17, 0, 39])
    got = teacher.signal({"pixel_values": images[idx], "example_index": idx}, want=Want()).logits
    model.eval()  # dropout off, as the teacher's predictions are made
    with torch.no_grad():
        assert torch.allclose(got, model(pixel_values=images[idx]), atol=1e-6)
