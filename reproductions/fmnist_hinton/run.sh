#!/usr/bin/env bash
# The teacher (kdistill train-teacher), then the student sweeps (kdistill sweep): the plain
# protocol, the omitted class, 3% of the data. Each step resumes where it stopped, so
# re-running this script continues the reproduction.
set -euo pipefail
cd "$(dirname "$0")/../.."
K=.venv/bin/kdistill
$K train-teacher src/kdistill/configs/fmnist_teacher.yaml "$@"
for spec in sweep omitted_class three_percent; do
  $K sweep "reproductions/fmnist_hinton/$spec.yaml"
done
