"""Re-export of the small units' cycle contract, now in qsim.hw.units: kept until conv_unit and engine import
qsim.hw.units."""

from qsim.hw.units import (  # noqa: F401
    CONV_STAGE,
    TABLE_ENTRIES,
    TABLE_LATENCY,
    conv_unit_cycles,
    residual_unit_cycles,
    rmsnorm_unit_cycles,
    table_unit_cycles,
)
