"""Amaranth datapath of the `fixed` numerics: the selective-scan unit and the Hadamard unit.

Each unit reproduces qsim.fixed.ops bit for bit (checked against golden/ vector
sets) and meets the cycle formulas of qsim.hw.units exactly.
"""
