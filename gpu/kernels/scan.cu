// Beside qsim.fixed.ops.scan: the selective scan over a prompt. One thread per state element
// (d, n), N lanes per channel (N a power of two <= 32), the state in a register for the whole
// sequence; C.h is summed across the N lanes by shuffles. N-fold more threads than one thread per
// channel: an H100 needs ~10^5 threads to hide latency, d_inner alone is 1536..5120.
// scan_update / scan_output (common.cuh) are shared with the fused decode step.
#include "common.cuh"

// xs, dt (int16), z: rows of d_inner (strides ldxs, lddt, ldz); B, C: rows of N (stride ldbc, e.g. the
// B and C columns of x_proj's output); silu_z: the SiLU(z) table of int16 gates; h: (di, N) int32 state,
// updated; a_q: (di, N) uint16; Dq, m_y, s_y: per channel; y: (L, di) int16 output (stride ldy).
// Grid ceil(di * N / blockDim).
extern "C" __global__ void scan_prefill(const i8 *xs, int ldxs, const dt_t *dt, int lddt, const i8 *B, const i8 *C,
                                        int ldbc, const i8 *z, int ldz, const gate_t *silu_z, int *h,
                                        const unsigned short *a_q, int frac, int m_h, int s_h, const i64 *Dq,
                                        const int *m_y, const int *s_y, const int *exp_tab, int state_bits,
                                        short *y, int ldy,
                                        int L, int di, int N, u64 *c_state, u64 *c_y) {
  const int gt = blockIdx.x * blockDim.x + threadIdx.x;
  const int ch = gt / N, n = gt % N;
  const bool ok = ch < di;
  const size_t d = ok ? ch : 0;  // spare lanes shadow channel 0 so that every lane joins the shuffles
  const int a = a_q[d * N + n];
  const i64 dq = Dq[d];
  const int my = m_y[d], sy = s_y[d];
  i64 hv = h[d * N + n];
  unsigned ns = 0, ny = 0;
#pragma unroll 2
  for (int t = 0; t < L; ++t) {
    const int dtv = dt[(size_t)t * lddt + d], xv = xs[(size_t)t * ldxs + d];
    hv = scan_update(dtv, dtv * xv, a, B[(size_t)t * ldbc + n], hv, frac, m_h, s_h, exp_tab, state_bits, ns);
    i64 part = (i64)C[(size_t)t * ldbc + n] * hv;
    for (int o = N / 2; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
    if (ok && n == 0)
      y[(size_t)t * ldy + d] =
          (short)scan_output(part, xv, dq, silu_z[z[(size_t)t * ldz + d] + 128], my, sy, state_bits, ny);
  }
  if (ok) h[d * N + n] = (int)hv;
  flush_count(c_state, ok ? ns : 0);
  flush_count(c_y, ny);
}
