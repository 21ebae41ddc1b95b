#!/usr/bin/env bash
# Set up (see setup_env.sh) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash build_tools/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -ra "$@"
