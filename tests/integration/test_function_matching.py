"""Issue 17's levers in the classifier path: an ensemble teacher and function matching (the
same flipped / blended image to teacher and student, labelled by the teacher on the fly)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill.cli.main import main
from kdistill.data.fashion_mnist import ROOT, ImageCollator, flip_images, mixup_images
from kdistill.models.classifiers import EnsembleClassifier, build_classifier, save_classifier

pytestmark = pytest.mark.integration
CONFIGS = Path(__file__).resolve().parents[2] / "src/kdistill/configs"
needs_data = pytest.mark.skipif(not ROOT.is_dir(), reason="apt-get install dataset-fashion-mnist")


def test_flip_mirrors_about_half_the_images_and_leaves_the_rest():
    x = torch.rand(400, 1, 28, 28)
    y = flip_images(x, torch.Generator().manual_seed(0))
    same = [torch.equal(y[i], x[i]) for i in range(len(x))]
    mirrored = [torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(a != b for a, b in zip(same, mirrored))  # each one or the other, never both
    assert 150 < sum(mirrored) < 250
    assert torch.equal(x, x.clone())  # the input is not modified in place


def test_mixup_blends_the_batch_with_a_shuffled_copy():
    # image i is one bright pixel at position i: a blend shows both images and their shares
    n = 16
    x = torch.zeros(n, 1, 28, 28)
    x.view(n, -1)[torch.arange(n), torch.arange(n)] = 1.0
    for seed in range(5):
        y = mixup_images(x, 0.4, torch.Generator().manual_seed(seed)).view(n, -1)[:, :n]
        own = y.diagonal()
        lam = float(own.min())  # an image blended with itself keeps 1
        assert 0 <= lam <= 1
        partners = []
        for i in range(n):
            rest = y[i].clone()
            rest[i] = 0
            if float(own[i]) == 1.0:  # its own partner
                partners.append(i)
                continue
            assert float(own[i]) == pytest.approx(lam, abs=1e-6)  # one share for the batch
            assert float(rest.max()) == pytest.approx(1 - lam, abs=1e-6)
            partners.append(int(rest.argmax()))
        assert sorted(partners) == list(range(n))  # a permutation of the batch
    assert torch.equal(mixup_images(x, 0.0), x)  # off
    assert torch.equal(mixup_images(x[:1], 0.4), x[:1])  # one image: nothing to blend


def test_collator_gives_teacher_and_student_one_augmented_batch():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    items = [
        {"pixel_values": x[i], "labels": torch.tensor(i), "example_index": i} for i in range(8)
    ]
    col = ImageCollator(jitter=1, flip=True, mixup=0.4)
    assert col.augments and not ImageCollator().augments
    batch = col(items)
    assert batch["pixel_values"].shape == x.shape and not torch.equal(batch["pixel_values"], x)
    assert batch["labels"].tolist() == list(range(8))  # labels untouched (teacher labels)


def test_ensemble_is_the_mean_of_its_members_log_probabilities():
    torch.manual_seed(0)
    a, b = build_classifier("cnn", channels=[4, 8]), build_classifier("mlp", hidden=[16])
    x = torch.rand(5, 1, 28, 28)
    got = EnsembleClassifier([a, b])(x)
    la, lb = a(x).log_softmax(-1), b(x).log_softmax(-1)
    # hand-worked: log of the normalised geometric mean of the two predictions
    geo = torch.exp((la + lb) / 2)
    assert torch.allclose(got.exp(), geo / geo.sum(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(EnsembleClassifier([a])(x), la, atol=1e-6)


def _tiny_teachers(tmp_path: Path) -> list[Path]:
    out = []
    for seed, (arch, kw) in enumerate([("cnn", {"channels": [4, 8]}), ("mlp", {"hidden": [32]})]):
        torch.manual_seed(seed)
        spec = {"arch": arch, "channels": [4, 8], "hidden": [32], "n_classes": 10}
        save_classifier(build_classifier(arch, **kw), spec, tmp_path / f"t{seed}")
        out.append(tmp_path / f"t{seed}")
    return out


@needs_data
def test_function_matching_from_an_ensemble_through_the_cli(tmp_path):
    t0, t1 = _tiny_teachers(tmp_path)
    run = tmp_path / "fm"
    argv = [
        "distill",
        str(CONFIGS / "fmnist_distill.yaml"),
        f"output_dir={run}",
        f"teacher.model={t0}",
        f"teacher.ensemble=[{t1}]",
        "student.hidden=[32]",
        "data.max_train_examples=512",
        "data.max_eval_tokens=200",
        "data.jitter=1",
        "data.flip=true",
        "data.mixup=0.4",
        "distill.hard_weight=0",
        "training.max_steps=4",
        "training.per_device_batch_size=64",
        "training.logging_steps=1",
    ]
    assert main(argv) == 0
    res = json.loads((run / "results.json").read_text())
    sizes = [(t / "model.safetensors").stat().st_size for t in (t0, t1)]
    assert res["teacher"]["size_bytes"] == sum(sizes)  # the ensemble's size: both members
    log = [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(r["soft_loss"] > 0 and r["hard_loss"] >= 0 for r in log)


def test_augmentation_and_ensemble_refusals_are_one_line_and_leave_nothing(tmp_path, capsys):
    t0, t1 = _tiny_teachers(tmp_path)
    base = ["distill", str(CONFIGS / "fmnist_distill.yaml"), f"teacher.model={t0}"]
    cases = [
        ([*base, "data.mixup=0.4"], "set distill.hard_weight=0"),
        ([*base, "data.mixup=0.4", "teacher.kind=none"], "need a teacher to label them"),
        (
            ["train-teacher", str(CONFIGS / "fmnist_teacher.yaml"), "data.mixup=0.2"],
            "need a teacher to label them",
        ),
        (
            ["train-teacher", str(CONFIGS / "fmnist_teacher.yaml"), f"teacher.ensemble=[{t1}]"],
            "train each with kdistill train-teacher",
        ),
        ([*base, f"teacher.ensemble=[{tmp_path / 'nope'}]"], "nope"),
        (["distill", str(CONFIGS / "demo.yaml"), f"teacher.ensemble=[{t1}]"], "task: classifier"),
        ([*base, "training.fsdp={enabled: true}"], "applies to language-model runs"),
        ([*base, "student.lora={r: 4}"], "applies to language-model runs"),
    ]
    for i, (argv, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        capsys.readouterr()
        assert main([*argv, f"output_dir={out}"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists()
