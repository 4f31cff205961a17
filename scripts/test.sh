#!/usr/bin/env bash
# Set up the environment (first run only), then the lint and format gate (ruff), then every test:
# the engine's (training/tests) and the Slicer module's that run without Slicer (Testing/).
# Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
exec "$root/.venv/bin/python" -m pytest -ra "$@"
