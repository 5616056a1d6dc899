// Beside qsim.fixed.ops.hadamard_rows (qsim.hadamard.fwht) followed by requantize to int8: the
// integer Hadamard of size m * 2**k (m in 1, 12, 20) on whole rows, one block per row.
// Stage 1: radix-2 butterflies inside segments of p1; stage 2: the order-S matrix O across
// segments (gpu.layout.hadamard_plan; the prefill path uses p1 = 2**k and O = qsim's base matrix).
#include "common.cuh"

// y: int16 rows (stride ldy) of n values; y_had (optional): int32 transform; yo: int8 requantized.
// Dynamic shared memory: 4 * n + S * S bytes.
extern "C" __global__ void hadamard_rq(const short *y, int ldy, int n, int p1, const i8 *O, int S, int m, int s,
                                       int *y_had, i8 *yo, u64 *c_yo) {
  int *v = (int *)dyn_smem;
  i8 *O_s = (i8 *)(v + n);
  const size_t row = blockIdx.x;
  for (int j = threadIdx.x; j < n; j += blockDim.x) v[j] = y[row * ldy + j];
  for (int j = threadIdx.x; j < S * S; j += blockDim.x) O_s[j] = O[j];
  __syncthreads();
  wht_segments(v, p1, n);
  unsigned c = 0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    const int yh = hadamard_out(v, O_s, S, p1, k);
    if (y_had) y_had[row * n + k] = yh;
    yo[row * n + k] = (i8)requant(yh, m, s, 8, c);
  }
  flush_count(c_yo, c);
}
