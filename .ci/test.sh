#!/usr/bin/env bash
# The README's second command: install what the tests need, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e ".[dev,hw,scale]"
if [ -f .ci/install-hw.sh ]; then bash .ci/install-hw.sh; fi
export HF_HUB_OFFLINE=1
export QSIM_REQUIRE_HW=1  # a missing simulator fails the RTL tests instead of skipping them
python3 -m pytest -q
