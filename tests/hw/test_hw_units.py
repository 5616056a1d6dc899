"""The two unit formulas RTL is held to, on hand-checkable parameter sets."""

import math

import pytest

from qsim.errors import QsimError
from qsim.hw import units
from qsim.hw.units import (
    hadamard_adds,
    hadamard_passes,
    hadamard_unit_cycles,
    scan_unit_cycles,
)


def test_scan_cycles_lanes_divide_the_state():
    # 64 x 16 = 1024 state elements, 8 per cycle: 128 cycles per token, latency once per burst
    assert scan_unit_cycles(8, 64, 16, 32) == 32 * 128 + units.SCAN_PIPELINE_LATENCY


def test_scan_cycles_round_up_partial_cycles():
    # 4 x 4 = 16 elements over 3 lanes: 6 cycles per token, unless the recurrence loop is longer
    per_token = max(6, units.SCAN_RECURRENCE_LATENCY)
    assert scan_unit_cycles(3, 4, 4, 5) == 5 * per_token + units.SCAN_PIPELINE_LATENCY
    assert scan_unit_cycles(1, 64, 16, 2) == 2 * 1024 + units.SCAN_PIPELINE_LATENCY  # 1024 > any recurrence


def test_scan_cycles_wait_for_the_recurrence_when_the_state_is_tiny():
    # 2 x 4 = 8 elements on 64 lanes is one cycle, shorter than the state write-back loop
    per_token = max(1, units.SCAN_RECURRENCE_LATENCY)
    assert scan_unit_cycles(64, 2, 4, 10) == 10 * per_token + units.SCAN_PIPELINE_LATENCY


def test_scan_cycles_decode_step_is_one_burst_of_one_token():
    assert scan_unit_cycles(256, 5120, 16, 1) == math.ceil(5120 * 16 / 256) + units.SCAN_PIPELINE_LATENCY


def test_zero_tokens_or_vectors_cost_nothing():
    assert scan_unit_cycles(8, 64, 16, 0) == 0
    assert hadamard_unit_cycles(8, 128, 0) == 0


def test_hadamard_power_of_two_is_log2_passes():
    # 128 = 2**7: seven radix-2 passes of 128/8 = 16 cycles, each draining the pipeline
    assert hadamard_passes(128) == 7
    assert hadamard_unit_cycles(8, 128, 3) == 3 * 7 * (16 + units.HADAMARD_PASS_LATENCY)


def test_hadamard_12_times_power_of_two_adds_m_minus_one_sweeps():
    # 1536 = 12 * 128 (mamba-130m's d_inner): 7 radix-2 passes + 11 sweeps of the H_12 stage
    assert hadamard_passes(1536) == 7 + 11
    assert hadamard_unit_cycles(8, 1536, 1) == 18 * (1536 // 8 + units.HADAMARD_PASS_LATENCY)
    assert hadamard_adds(1536) == 1536 * 18


def test_hadamard_lanes_that_do_not_divide_n_round_up():
    assert hadamard_unit_cycles(5, 64, 2) == 2 * 6 * (math.ceil(64 / 5) + units.HADAMARD_PASS_LATENCY)


@pytest.mark.parametrize("call", [
    lambda: scan_unit_cycles(0, 64, 16, 1),
    lambda: scan_unit_cycles(8, 64, 16, -1),
    lambda: scan_unit_cycles(8.5, 64, 16, 1),
    lambda: hadamard_unit_cycles(8, 10, 1),  # 10 = 5 * 2 has no Hadamard matrix in the spec
    lambda: hadamard_unit_cycles(8, 0, 1),
])
def test_bad_parameters_are_errors(call):
    with pytest.raises(QsimError):
        call()
