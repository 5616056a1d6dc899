"""CUDA kernels and executors of the `fixed` datapath, an FP16 baseline, and the GPU benchmark.

Depends on qsim (and calib for the synthetic benchmark artifact); qsim never imports gpu.
Kernels are compiled at run time by NVRTC through CuPy (the `[gpu]` extra).
"""
