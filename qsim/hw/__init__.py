"""Cycle, energy and latency model of quantized Mamba on accelerators and GPUs.

`units` holds the two unit formulas RTL simulation is held to; `shapes` the
per-layer operation lists; `target` and `energy` the editable accelerator
descriptions; `cost` the per-operation cycles and energy; `devices` the GPU
roofline set beside published and measured latency; `latency` the GPU
latency model beyond the roofline, `latency_fit` its fit on published figures
with leave-one-out errors, `latency_report` its report section; `cli` the
`estimate` and `report` commands.
"""
