"""Real DeepSpeed ZeRO-3 (CPU accelerator, gloo), 2 processes at global batch 4 against 1
process: the same losses, gradient norms and final weights. The student's tied head is a
partitioned ZeRO-3 parameter that the chunked loss reads outside the model's forward.

DeepSpeed is not a test dependency (its source build is heavy): this runs where it is
installed (``pip install deepspeed``) and is skipped elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.test_fsdp import REPO, _overrides, assert_same_training, run_two_processes

pytestmark = pytest.mark.integration

# each rank counts the step-long ZeRO-3 gathers of the head (one a step)
SCRIPT = """
import json, os, sys
from kdistill.config.loader import load_config
from kdistill.pipeline.distill_lm import run_distill_lm
from kdistill.training import sharding

seen = {"zero3_gathers": 0}
plain = sharding._zero3_gather
def counting(params):
    seen["zero3_gathers"] += 1
    return plain(params)
sharding._zero3_gather = counting
run_distill_lm(load_config(sys.argv[1], sys.argv[2:]))
with open(f"seen-{os.environ.get('RANK', '0')}.json", "w") as f:
    json.dump(seen, f)
"""


def test_zero3_two_processes_match_one_process(tiny_teacher_dir, tiny_text_file, tmp_path):
    pytest.importorskip("deepspeed")
    demo = str(REPO / "src/kdistill/configs/demo.yaml")
    script = tmp_path / "ds_run.py"
    script.write_text(SCRIPT)
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    one, two = tmp_path / "one", tmp_path / "two"
    single = _overrides(
        tiny_teacher_dir, tiny_text_file, one, **{"training.per_device_batch_size": 4}
    )
    subprocess.run([sys.executable, str(script), demo, *single], check=True, env=env, cwd=tmp_path)
    config = REPO / "examples" / "deepspeed_zero3.json"
    sharded = _overrides(
        tiny_teacher_dir,
        tiny_text_file,
        two,
        **{
            "training.per_device_batch_size": 2,
            "training.extra": f"{{optim: sgd, deepspeed: {config}}}",
        },
    )
    run_two_processes(script, [demo, *sharded], env, tmp_path)
    for rank in (0, 1):  # the head was a partitioned ZeRO-3 parameter, gathered every step
        seen = json.loads((tmp_path / f"seen-{rank}.json").read_text())
        assert seen["zero3_gathers"] == 3, seen
    assert_same_training(one, two)
