#!/usr/bin/env bash
# The teachers (kdistill train-teacher), then the student sweeps (kdistill sweep): the plain
# protocol, the omitted class, 3% of the data, the levers (a longer schedule, an ensemble
# teacher, the temperature) and function matching. Each step resumes where it stopped, so
# re-running this script continues the reproduction.
set -euo pipefail
cd "$(dirname "$0")/../.."
K=.venv/bin/kdistill
$K train-teacher src/kdistill/configs/fmnist_teacher.yaml "$@"
# two more teachers (seeds 1, 2) for the ensemble lever
for s in 1 2; do
  $K train-teacher src/kdistill/configs/fmnist_teacher.yaml seed=$s \
    output_dir=runs/fmnist/teacher_s$s "$@"
done
for spec in sweep omitted_class three_percent levers function_matching; do
  $K sweep "reproductions/fmnist_hinton/$spec.yaml"
done
