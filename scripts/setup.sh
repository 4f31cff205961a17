#!/usr/bin/env bash
# Create .venv in the repository and install the engine with its test extras.
# torch is pinned first (torch==2.13.0): any other torch spec would pull gigabytes of CUDA packages.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python3}"
venv="$root/.venv"
stamp="$venv/.ctdenoise-installed"
want="$(cat training/pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import ctdenoise, torch" 2>/dev/null; then
  exit 0
fi
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet -e "training[torch,test]"
echo "$want" > "$stamp"
echo "set up $venv ($("$venv/bin/python" -c 'import torch, ctdenoise; print("torch", torch.__version__, "ctdenoise", ctdenoise.__version__)'))"
