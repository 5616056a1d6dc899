"""The CPU emulator exposes what a GPU would: small kernels with a deliberate fault each, on
emulated launches. A fault that every order and every poison pattern hid would pass these tests
nowhere, so each test also shows the fault-free reading or the natural order it differs from."""

from __future__ import annotations

import pytest
import torch

import cuda_emulator

FAULTY = r"""
extern __shared__ int4 dyn_smem[];

extern "C" __global__ void last_block(int *out) {  // whichever block runs last wins
  if (threadIdx.x == 0) *out = (int)blockIdx.x;
}

extern "C" __global__ void unwritten(int *out) {  // reads shared memory nobody wrote
  __shared__ int s[64];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void from_block_0(int *out) {  // expects block 0's shared memory in every block
  __shared__ int s[32];
  if (blockIdx.x == 0) s[threadIdx.x] = 7;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void no_barrier(int *out) {  // reads the previous thread's write without __syncthreads
  __shared__ int s[256];
  s[threadIdx.x] = (int)threadIdx.x;
  out[threadIdx.x] = threadIdx.x ? s[threadIdx.x - 1] : -1;
}

extern "C" __global__ void dynamic(int *out) {  // dynamic shared memory: as unwritten, and its size
  out[threadIdx.x] = ((int *)dyn_smem)[threadIdx.x];
}

extern "C" __global__ void big_static(int *out) {
  __shared__ int s[12 * 1024];  // 48 KB, all a block may have without the opt-in attribute
  s[threadIdx.x] = 1;
  out[threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void half_mask(int *out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffu, (int)threadIdx.x, 1);
}
"""


@pytest.fixture
def kernels(emu_available):
    return lambda seed=0: cuda_emulator.EmuKernels(seed, sources={"t": FAULTY})


def test_block_order_is_natural_at_seed_0_and_shuffled_reproducibly_otherwise(kernels):
    def last(seed):
        out = torch.zeros(1, dtype=torch.int32)
        kernels(seed)["t.last_block"](64, 32, out)
        return int(out)

    assert last(0) == 63
    assert {last(s) for s in (1, 2, 3)} != {63} and last(1) == last(1)


def test_static_shared_memory_starts_as_nonzero_garbage_that_varies_per_block(kernels):
    out = torch.zeros((4, 64), dtype=torch.int32)
    kernels()["t.unwritten"](4, 64, out)
    assert (out != 0).all() and len({int(out[b, 1]) for b in range(4)}) == 4


def test_shared_memory_does_not_carry_over_between_blocks(kernels):
    out = torch.zeros((3, 32), dtype=torch.int32)
    kernels()["t.from_block_0"](3, 32, out)
    assert (out[0] == 7).all() and (out[1:] != 7).all()


def test_a_missing_barrier_shows_in_a_shuffled_thread_order(kernels):
    want = torch.arange(-1, 255, dtype=torch.int32)
    natural, shuffled = torch.zeros(256, dtype=torch.int32), torch.zeros(256, dtype=torch.int32)
    kernels(0)["t.no_barrier"](1, 256, natural)
    kernels(1)["t.no_barrier"](1, 256, shuffled)
    assert torch.equal(natural, want) and not torch.equal(shuffled, want)


def test_dynamic_shared_memory_is_poisoned_and_limited_to_48_kb(kernels):
    out = torch.zeros(32, dtype=torch.int32)
    k = kernels()
    k["t.dynamic"](1, 32, out, shared=128)
    assert (out != 0).all()
    k["t.dynamic"](1, 32, out, shared=48 * 1024)
    with pytest.raises(RuntimeError, match="49153 bytes of shared memory"):
        k["t.dynamic"](1, 32, out, shared=48 * 1024 + 1)


def test_static_and_dynamic_shared_memory_count_together(kernels):
    out = torch.zeros(32, dtype=torch.int32)
    k = kernels()
    k["t.big_static"](1, 32, out)
    assert (out == 1).all()
    with pytest.raises(RuntimeError, match="49168 bytes of shared memory"):
        k["t.big_static"](1, 32, out, shared=16)


def test_launches_beyond_an_h100s_limits_fail(kernels):
    out = torch.zeros(2048, dtype=torch.int32)
    k = kernels()
    with pytest.raises(RuntimeError, match="launch limits"):
        k["t.last_block"](1, 2048, out)
    with pytest.raises(RuntimeError, match="launch limits"):
        k["t.last_block"]((1, 65536), 32, out)
    assert cuda_emulator.H100.multi_processor_count == 132 and cuda_emulator.H100.warp_size == 32


def test_an_error_inside_a_thread_fails_the_launch(kernels):
    with pytest.raises(RuntimeError, match="half_mask: only full-warp masks"):
        kernels()["t.half_mask"](1, 32, torch.zeros(32, dtype=torch.int32))
