"""LM validation share (``data.validation_fraction``): records set aside by a second hash,
never trained on, scored by ``kdistill eval --part validation`` and by sweeps, whose grid
points are then chosen on it rather than on the held-out test records."""

from __future__ import annotations

import json

import pytest

from kdistill.data.holdout import split_held_out
from kdistill.data.lm import held_out_texts, training_texts
from tests.conftest import TINY_TEXT

RECORDS = [f"record {i}: {t}" for i, t in enumerate(TINY_TEXT * 5)]  # 240 distinct


def test_three_disjoint_parts_and_no_validation_changes_nothing():
    before_train, before_test = split_held_out(RECORDS, 0.1, seed=3)
    train, test = split_held_out(RECORDS, 0.1, seed=3, validation=0.0)
    assert (train, test) == (before_train, before_test)
    train_v, test_v = split_held_out(RECORDS, 0.1, seed=3, validation=0.2)
    _, val = split_held_out(RECORDS, 0.1, seed=3, validation=0.2, part="validation")
    assert test_v == test  # the test records do not move
    assert sorted(train_v + val) == sorted(train)  # validation comes out of training only
    assert not set(val) & set(train_v) and not set(val) & set(test)
    assert 0.1 < len(val) / len(train) < 0.3
    again = split_held_out(RECORDS, 0.1, seed=3, validation=0.2, part="validation")[1]
    assert again == val  # the same every run
    other_seed = split_held_out(RECORDS, 0.1, seed=4, validation=0.2, part="validation")[1]
    assert other_seed != val


def test_training_never_sees_the_validation_records(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(RECORDS))
    kw = {"held_out_fraction": 0.1, "validation_fraction": 0.2, "seed": 0}
    trained = set(training_texts(str(path), **kw))
    val = held_out_texts(str(path), part="validation", **kw)
    test = held_out_texts(str(path), **kw)
    assert val and test and not set(val) & trained and not set(val) & set(test)


def test_eval_scores_the_seeds_test_or_validation_part(tiny_teacher_dir, tiny_text_file, tmp_path):
    from kdistill.errors import InputError
    from kdistill.pipeline.evaluate import run_eval

    args = (str(tiny_teacher_dir), {"s": str(tiny_teacher_dir)}, str(tiny_text_file), 16, 0.2)
    kw = {"quality_only": True, "validation_fraction": 0.3}
    test = run_eval(*args, 64, tmp_path / "t.json", **kw)["teacher"]
    val = run_eval(*args, 64, tmp_path / "v.json", part="validation", **kw)["teacher"]
    assert val["eval_tokens"] > 0 and val["perplexity"] != test["perplexity"]
    # the run's seed chooses its held-out split: another seed, other records
    other = run_eval(*args, 64, tmp_path / "s.json", seed=5, **kw)["teacher"]
    assert other["perplexity"] != test["perplexity"]
    with pytest.raises(InputError, match="--part 'validation'"):
        run_eval(*args, 64, tmp_path / "x.json", quality_only=True, part="validation")
    assert not (tmp_path / "x.json").exists()


def test_an_lm_sweep_chooses_on_the_validation_share(tiny_teacher_dir, tiny_text_file, tmp_path):
    from kdistill.cli.main import main
    from tests.integration.test_sweep import _spec

    spec = _spec(
        tmp_path,
        tiny_teacher_dir,
        tiny_text_file,
        base=["data.validation_fraction=0.3"],
        seeds=1,
        arms={"kd": {}},
        baseline=None,
    )
    assert main(["sweep", str(spec)]) == 0
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert data["selected_on"] == "validation"
    cells = {c["group"]: c["metrics"]["cell"] for c in data["cells"]}
    assert len(cells) == 2
    for m in cells.values():
        assert m["validation_perplexity"] > 0 and m["validation_perplexity"] != m["perplexity"]
    best = min(cells, key=lambda n: cells[n]["validation_perplexity"])
    (chosen,) = data["chosen"].values()
    assert best == chosen
