// Beside qsim.fixed.ops.rmsnorm: fixed-point RMSNorm of residual rows (int32, 24-bit) to int8,
// one block per row (the math is rmsnorm_row in common.cuh, shared with the fused decode kernel).
#include "common.cuh"

extern "C" __global__ void rmsnorm_rows(const int *r, int d, const short *g, long long eps, int m, int s,
                                        const int *rsqrt_tab, i8 *u, u64 *c_u) {
  __shared__ i64 scratch[32];
  const size_t row = blockIdx.x;
  unsigned n = 0;
  rmsnorm_row(r + row * d, d, g, eps, m, s, rsqrt_tab, scratch, n, [&](int j, int q) { u[row * d + j] = (i8)q; });
  flush_count(c_u, n);
}
