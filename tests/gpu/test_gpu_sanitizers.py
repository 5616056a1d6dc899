"""The emulated kernels under AddressSanitizer and UndefinedBehaviorSanitizer (built with
-fsanitize=address,undefined -fno-sanitize-recover=all): the exact tests pass, and a deliberate
out-of-bounds read or signed overflow aborts. Each run is a subprocess started with libasan
preloaded (an ASan library cannot load into a process without it). Global memory is checked
because torch's CPU tensors are allocations of exactly their size; shared memory because the
emulator allocates each block's exactly as declared or requested."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cuda_emulator

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def sanitized(emu_available):
    libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.fail(f"g++ has no libasan.so ({libasan}): install the compiler's sanitizer runtime")
    cuda_emulator.prebuild(sanitize=True)
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0", QSIM_EMU_SANITIZE="1",
               UBSAN_OPTIONS="print_stacktrace=1")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=HERE.parent.parent, env=env, capture_output=True, text=True)

    return run


def test_the_exact_tests_pass_under_asan_and_ubsan(sanitized):
    """Every kernel on its random and edge inputs, the executor's prefill and decode steps on four
    models, the FP16 baseline and the golden sets, in the natural order (fd-level capture off, so a
    sanitizer's report reaches stderr)."""
    res = sanitized("-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", str(HERE / "test_gpu_exact.py"),
                    "-k", "emu and not shuffled and not qsim_run and not 256")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    assert " passed" in res.stdout and "failed" not in res.stdout and "error" not in res.stdout.lower()


# One kernel per fault, each over a (32 ints) as 32 threads with 128 bytes of dynamic shared memory.
FAULTS = {
    "global_read": ("int v = a[threadIdx.x + 1];", "heap-buffer-overflow"),
    "static_shared_read": ("__shared__ int s[32]; s[threadIdx.x] = a[threadIdx.x]; __syncthreads();\n"
                           "const int *p = s; int v = p[threadIdx.x + 1];", "heap-buffer-overflow"),
    "dynamic_shared_read": ("int *d = (int *)dyn_smem; d[threadIdx.x] = a[threadIdx.x]; __syncthreads();\n"
                            "int v = d[threadIdx.x + 1];", "heap-buffer-overflow"),
    "signed_overflow": ("int v = a[threadIdx.x] + 2147483600;", "signed integer overflow"),
}
FAULTY = "extern __shared__ int4 dyn_smem[];\n" + "".join(
    f'extern "C" __global__ void {name}(const int *a, int *out) {{\n{body}\nout[threadIdx.x] = v;\n}}\n'
    for name, (body, _) in FAULTS.items())


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_in_a_kernel_aborts_the_sanitized_run(sanitized, fault):
    cuda_emulator.compile_library("faults", FAULTY, sanitize=True)  # once, not in every subprocess
    script = ("import sys, torch; sys.path.insert(0, 'tests/gpu'); import cuda_emulator\n"
              f"k = cuda_emulator.EmuKernels(sanitize=True, sources={{'faults': {FAULTY!r}}})['faults.{fault}']\n"
              "k(1, 32, torch.arange(32, 64, dtype=torch.int32), torch.zeros(32, dtype=torch.int32), shared=128)\n"
              "print('no fault')\n")
    res = sanitized("-c", script)
    report = FAULTS[fault][1]
    assert res.returncode != 0 and report in res.stderr and "no fault" not in res.stdout, res.stdout + res.stderr[-3000:]
