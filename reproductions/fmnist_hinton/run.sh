#!/usr/bin/env bash
# The teacher (kdistill train-teacher), then every student cell (kdistill sweep). Each step
# resumes where it stopped, so re-running this script continues the reproduction.
set -euo pipefail
cd "$(dirname "$0")/../.."
K=.venv/bin/kdistill
$K train-teacher src/kdistill/configs/fmnist_teacher.yaml "$@"
$K sweep reproductions/fmnist_hinton/sweep.yaml
