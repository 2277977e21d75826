# Shared by scripts/demo and scripts/test: create .venv and install the project into it.
# Usage: source scripts/_venv.sh EXTRA   (EXTRA: "" or "dev")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TITANS_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
# Pin torch first (a torch already in the venv is kept). Which build comes (CPU or CUDA)
# depends on the package index pip is configured with; the README shows how to choose.
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    "$py" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
extra="${1:-}"
if [ -n "$extra" ]; then
    "$py" -m pip install --quiet --disable-pip-version-check -e "$root[$extra]"
else
    "$py" -m pip install --quiet --disable-pip-version-check -e "$root"
fi
