"""The integer-only (`fixed`) datapath: reference ops, Numba twins, and the model executor."""
