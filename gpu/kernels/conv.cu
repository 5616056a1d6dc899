// Beside qsim.fixed.ops.conv followed by requantize and ops.lut (the SiLU table): the causal
// depthwise conv of a whole prompt. conv_acc / conv_save (common.cuh) are shared with the fused
// decode kernel.
#include "common.cuh"

constexpr int CONV_TOKENS = 16;  // tokens per thread

// x: the conv input rows (stride ldx, e.g. the x half of xz); state: the K-1 previous inputs
// (K-1, di), read only here; pre (optional): the requantized conv output before the table. Grid (ceil(di / blockDim), ceil(L / CONV_TOKENS)).
extern "C" __global__ void conv_prefill(const i8 *x, int ldx, const i8 *state, const i8 *w, const int *b, int K,
                                        int m, int s, const short *lut, i8 *pre, i8 *xs, int L, int di, u64 *c_conv) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  const int t0 = blockIdx.y * CONV_TOKENS, t1 = min(L, t0 + CONV_TOKENS);
  unsigned n = 0;
  if (d < di)
    for (int t = t0; t < t1; ++t) {
      const int q = (int)requant(conv_acc(state, x, ldx, w, b, K, di, d, t), m, s, 8, n);
      if (pre) pre[(size_t)t * di + d] = (i8)q;
      xs[(size_t)t * di + d] = (i8)lut[q + 128];
    }
  flush_count(c_conv, n);
}

// The state after the prompt (ops.conv's second result), run after conv_prefill.
extern "C" __global__ void conv_state_save(i8 *state, const i8 *x, int ldx, int K, int di, int L) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  if (d < di) conv_save(state, x, ldx, K, di, d, L);
}
