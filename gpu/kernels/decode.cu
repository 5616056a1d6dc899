// Beside qsim.fixed.executor.FixedExecutor.step: one decode token of the `fixed` datapath in four
// fused kernels per layer, each equal to a chain of qsim.fixed.ops:
//   norm_gemv   [residual add (executor) | embedding requantize] + ops.rmsnorm + ops.linear
//               (in_proj, or lm_head for the final norm) + requantize
//   conv_xproj  ops.conv (one token) + requantize + ops.lut (SiLU) + ops.linear (x_proj) partial sums
//   scan_step   requantize (x_proj) + ops.linear (dt_proj) + requantize + ops.lut (softplus, SiLU(z))
//               + ops.scan (one token) + the first stage of ops.hadamard_rows
//   had_outproj the rest of ops.hadamard_rows + requantize + ops.linear (out_proj) partial sums
// The split-K partial sums are int32 atomics (exact and order-free) into per-layer accumulators
// that the step zeroes once; their requantization happens in the next kernel. Every block of a
// kernel that recomputes a shared prologue uses identical integers, and only one block records
// them and counts their saturations, so the counts equal the reference's. Nothing here syncs
// with the host: the step can be captured in a CUDA graph. W8 / W4 instantiate int8 / int4 weights.
#include "common.cuh"

constexpr int SCAN_N = 16;  // d_state of every Mamba-1 checkpoint; the state row sits in registers
constexpr int DT_PF = 12;   // dt_proj row vectors loaded before the prologue (dt_rank <= 192)
constexpr int CHUNK_U = 8;  // row vectors in flight per lane in the split-K GEMVs

__device__ __forceinline__ int lane_of(const int4 &v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// ----------------------------------------------------------------------------- norm_gemv
// mode 0: r = requantize(embedding[tok], emb_m, emb_s, RESIDUAL_BITS) (layer 0);
// mode 1: out = requantize(out_acc, out_m, out_s, RESIDUAL_BITS) of the previous layer, r = sat(r_prev + out).
// Then u = rmsnorm(r) and y = W u: requantized per row to int8 (in_proj) or raw int32 (raw, lm_head).
// Grid-stride over rows, one warp per row; dynamic shared memory 4 * dm + Kp + 256 bytes.
#define NORM_GEMV_PARAMS                                                                                          \
  int mode, const int *tok, const i8 *emb, int emb_m, int emb_s, const int *r_prev, const int *out_acc,           \
      const int *out_m, const int *out_s, int *r_out, int *out_trace, const short *g, long long eps, int nm, int ns, \
      const int *rsqrt_tab, i8 *u_out, int dm, const void *W, const u8 *gs, int N, int Kp, int G, int group,       \
      const int *m, const int *s, void *y, int raw, u64 *c_res, u64 *c_out, u64 *c_u, u64 *c_lin
#define NORM_GEMV_ARGS                                                                                           \
  mode, tok, emb, emb_m, emb_s, r_prev, out_acc, out_m, out_s, r_out, out_trace, g, eps, nm, ns, rsqrt_tab, u_out, \
      dm, W, gs, N, Kp, G, group, m, s, y, raw, c_res, c_out, c_u, c_lin

template <class F> __device__ void norm_gemv(NORM_GEMV_PARAMS) {
  int *r_s = (int *)dyn_smem;
  i8 *x_s = (i8 *)(r_s + ((dm + 3) & ~3));  // 16-byte aligned
  i64 *scratch = (i64 *)(x_s + Kp);
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, nwarps = (gridDim.x * blockDim.x) >> 5;
  const int4 *Wv = (const int4 *)W;
  const int rv = Kp / F::COLS;
  int4 pre[ROW_PF];
  rows_prefetch(pre, Wv, rv, N, warp);
  const bool lead = blockIdx.x == 0;
  unsigned n_res = 0, n_out = 0, n_u = 0, n_lin = 0;
  const size_t t = mode == 0 ? (size_t)tok[0] : 0;
  for (int j = threadIdx.x; j < dm; j += blockDim.x) {
    i64 v;
    if (mode == 0) {
      v = requant(emb[t * dm + j], emb_m, emb_s, Q_RESIDUAL_BITS, n_res);
    } else {
      const i64 o = requant(out_acc[j], out_m[j], out_s[j], Q_RESIDUAL_BITS, n_out);
      v = sat_signed(r_prev[j] + o, Q_RESIDUAL_BITS, n_res);
      if (lead) out_trace[j] = (int)o;
    }
    r_s[j] = (int)v;
    if (lead) r_out[j] = (int)v;
  }
  for (int j = dm + threadIdx.x; j < Kp; j += blockDim.x) x_s[F::xpos(j)] = 0;
  __syncthreads();
  rmsnorm_row(r_s, dm, g, eps, nm, ns, rsqrt_tab, scratch, n_u, [&](int j, int q) {
    x_s[F::xpos(j)] = (i8)q;
    if (lead) u_out[j] = (i8)q;
  });
  __syncthreads();
  gemv_rows<F>(
      Wv, gs, N, rv, G, group, x_s, pre, warp, nwarps,
      [&](int row) { return raw ? make_int2(0, 0) : make_int2(m[row], s[row]); },
      [&](int row, int acc, int2 ms) {
        if (raw) ((int *)y)[row] = acc;
        else ((i8 *)y)[row] = (i8)requant(acc, ms.x, ms.y, 8, n_lin);
      });
  if (!lead) n_res = n_out = n_u = 0;
  flush_count(c_res, n_res);
  flush_count(c_out, n_out);
  flush_count(c_u, n_u);
  flush_count(c_lin, n_lin);
}

// ----------------------------------------------------------------------------- conv_xproj
// Block b owns channels [128 b, 128 b + 128): their conv (state shifted in place), SiLU table and
// conv_pre and xs, then the x_proj partial sums of all R rows over those 128 columns, added into p_acc.
#define CONV_XPROJ_PARAMS                                                                                  \
  const i8 *xz, i8 *conv_state, const i8 *conv_w, const int *conv_b, int K, int cm, int cs,                  \
      const short *silu_conv, i8 *pre_out, i8 *xs_out, int di, const void *W, const u8 *gs, int R, int Kp, int G, int group, \
      int *p_acc, u64 *c_conv
#define CONV_XPROJ_ARGS \
  xz, conv_state, conv_w, conv_b, K, cm, cs, silu_conv, pre_out, xs_out, di, W, gs, R, Kp, G, group, p_acc, c_conv

template <class F> __device__ void conv_xproj(CONV_XPROJ_PARAMS) {
  constexpr int KC = 128, LPR = KC / F::COLS;
  __shared__ __align__(16) i8 x_s[KC];
  const int c0 = blockIdx.x * KC, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int4 *Wv = (const int4 *)W;
  const int rv = Kp / F::COLS, v0 = c0 / F::COLS;
  int4 pre[CHUNK_U];
  chunk_prefetch<LPR>(pre, Wv, rv, v0, 0, R, warp, nwarps);
  unsigned n = 0;
  for (int k = threadIdx.x; k < KC; k += blockDim.x) {
    const int d = c0 + k;
    i8 q = 0;
    if (d < di) {
      const i64 pre_q = requant(conv_acc(conv_state, xz, 0, conv_w, conv_b, K, di, d, 0), cm, cs, 8, n);
      conv_save(conv_state, xz, 0, K, di, d, 1);
      q = (i8)silu_conv[pre_q + 128];
      pre_out[d] = (i8)pre_q;
      xs_out[d] = q;
    }
    x_s[F::xpos(k)] = q;
  }
  __syncthreads();
  gemv_chunk<F, LPR, CHUNK_U>(Wv, gs, rv, v0, 0, R, G, group, x_s, pre, warp, nwarps,
                     [&](int row, int acc) { atomicAdd(p_acc + row, acc); });
  flush_count(c_conv, n);
}

// ----------------------------------------------------------------------------- had_outproj
// Block (c, r) owns out_proj columns [KD c, KD c + KD), KD = 32 * COLS, and rows
// [rows_per_block r, ...): it finishes the Hadamard for its columns (stage 2 over v, the
// segment transforms written by scan_step) or takes y itself (had == 0), requantizes to int8
// (out_proj_in) and adds its partial sums into out_acc. Blocks with r == 0 record and count.
#define HAD_OUTPROJ_PARAMS                                                                                  \
  const int *v, const short *y16, const i8 *O, int S, int p1, int had, int om, int os, int *yhad_out, i8 *yo_out, \
      int di, const void *W, const u8 *gs, int N, int Kp, int G, int group, int rows_per_block, int *out_acc,      \
      u64 *c_yo
#define HAD_OUTPROJ_ARGS \
  v, y16, O, S, p1, had, om, os, yhad_out, yo_out, di, W, gs, N, Kp, G, group, rows_per_block, out_acc, c_yo

template <class F> __device__ void had_outproj(HAD_OUTPROJ_PARAMS) {
  constexpr int KD = 32 * F::COLS;
  __shared__ __align__(16) i8 x_s[KD];
  __shared__ i8 O_s[32 * 32];
  const int k0 = blockIdx.x * KD, r0 = blockIdx.y * rows_per_block, r1 = min(N, r0 + rows_per_block);
  const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int4 *Wv = (const int4 *)W;
  const int rv = Kp / F::COLS, v0 = k0 / F::COLS;
  int4 pre[CHUNK_U];
  chunk_prefetch<32>(pre, Wv, rv, v0, r0, r1, warp, nwarps);
  for (int j = threadIdx.x; j < S * S; j += blockDim.x) O_s[j] = O[j];
  __syncthreads();
  const bool lead = blockIdx.y == 0;
  unsigned n = 0;
  for (int k = threadIdx.x; k < KD; k += blockDim.x) {
    const int gk = k0 + k;
    i8 q = 0;
    if (gk < di) {
      const int yv = had ? hadamard_out(v, O_s, S, p1, gk) : y16[gk];
      q = (i8)requant(yv, om, os, 8, n);
      if (lead) {
        if (had) yhad_out[gk] = yv;
        yo_out[gk] = q;
      }
    }
    x_s[F::xpos(k)] = q;
  }
  if (!lead) n = 0;
  __syncthreads();
  gemv_chunk<F, 32, CHUNK_U>(Wv, gs, rv, v0, r0, r1, G, group, x_s, pre, warp, nwarps,
                    [&](int row, int acc) { atomicAdd(out_acc + row, acc); });
  flush_count(c_yo, n);
}

#define INSTANTIATE(F, SUFFIX)                                                                                 \
  extern "C" __global__ void __launch_bounds__(1024) norm_gemv_##SUFFIX(NORM_GEMV_PARAMS) {                   \
    norm_gemv<F>(NORM_GEMV_ARGS);                                                                              \
  }                                                                                                            \
  extern "C" __global__ void conv_xproj_##SUFFIX(CONV_XPROJ_PARAMS) { conv_xproj<F>(CONV_XPROJ_ARGS); }          \
  extern "C" __global__ void had_outproj_##SUFFIX(HAD_OUTPROJ_PARAMS) { had_outproj<F>(HAD_OUTPROJ_ARGS); }
INSTANTIATE(W8, w8)
INSTANTIATE(W4, w4)

// ----------------------------------------------------------------------------- scan_step
// Block = one segment of p1 = blockDim channels (one thread each, the 16 states in registers):
// x_proj requantized (every block, from p_acc), dt_proj row dot + bias, softplus table, SiLU(z)
// table, one scan step, then (had) the segment's radix-2 Hadamard stage into v_out. Dynamic shared
// memory rkp + 2 * SCAN_N + 4 * p1 bytes.
extern "C" __global__ void scan_step(const int *p_acc, const int *xm, const int *xsh, int R, int rk, int rkp,
                                     i8 *p_out, const i8 *Wdt, const int *dt_b, int dtm, int dts,
                                     const short *softplus, i8 *dtpre_out, dt_t *dt_out, const i8 *xs,
                                     const i8 *xz, const gate_t *silu_z, gate_t *sz_out, int *h,
                                     const unsigned short *a_q, int frac, int m_h, int s_h, const i64 *Dq,
                                     const int *m_y, const int *s_y, const int *exp_tab, int state_bits,
                                     short *y_out, int *v_out, int di, int had, u64 *c_xp, u64 *c_dt,
                                     u64 *c_state, u64 *c_y) {
  constexpr int N = SCAN_N;
  i8 *dtr_s = (i8 *)dyn_smem;          // rkp bytes, zero padded
  i8 *bc_s = dtr_s + rkp;          // B then C
  int *v_s = (int *)(bc_s + 2 * N);
  const int tid = threadIdx.x, p1 = blockDim.x;
  const size_t d = (size_t)blockIdx.x * p1 + tid;
  // loads that do not wait for the prologue
  int4 hq[N / 4], aq[N / 8], wq[DT_PF];
#pragma unroll
  for (int i = 0; i < N / 4; ++i) hq[i] = reinterpret_cast<const int4 *>(h + d * N)[i];
#pragma unroll
  for (int i = 0; i < N / 8; ++i) aq[i] = reinterpret_cast<const int4 *>(a_q + d * N)[i];
  const int4 *wr = reinterpret_cast<const int4 *>(Wdt + d * rkp);
  const int nv = rkp / 16;
#pragma unroll
  for (int c = 0; c < DT_PF; ++c)
    if (c < nv) wq[c] = __ldcs(wr + c);
  const int xsv = xs[d], zv = xz[di + d], bias = dt_b[d];
  const i64 dq = Dq[d];
  const int my = m_y[d], sy = s_y[d];
  unsigned n_xp = 0, n_dt = 0, n_h = 0, n_y = 0;
  for (int j = tid; j < R; j += p1) {
    const i8 q = (i8)requant(p_acc[j], xm[j], xsh[j], 8, n_xp);
    if (j < rk) dtr_s[j] = q;
    else bc_s[j - rk] = q;
    if (blockIdx.x == 0) p_out[j] = q;
  }
  for (int j = rk + tid; j < rkp; j += p1) dtr_s[j] = 0;
  if (blockIdx.x != 0) n_xp = 0;
  __syncthreads();
  const int4 *dtr4 = reinterpret_cast<const int4 *>(dtr_s);
  int acc = 0;
#pragma unroll
  for (int c = 0; c < DT_PF; ++c)
    if (c < nv) acc = dp4a4(wq[c], dtr4[c], acc);
  for (int c = DT_PF; c < nv; ++c) acc = dp4a4(__ldcs(wr + c), dtr4[c], acc);
  const int dt_pre = (int)requant((i64)acc + bias, dtm, dts, 8, n_dt), dtv = softplus[dt_pre + 128];
  dtpre_out[d] = (i8)dt_pre;
  dt_out[d] = (dt_t)dtv;
  const int sz = silu_z[zv + 128], dx = dtv * xsv;
  sz_out[d] = (gate_t)sz;
  int hn[N];
  i64 ch = 0;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    const int a = (lane_of(aq[n / 8], (n % 8) / 2) >> (16 * (n % 2))) & 0xFFFF;
    const i64 v = scan_update(dtv, dx, a, bc_s[n], lane_of(hq[n / 4], n % 4), frac, m_h, s_h, exp_tab, state_bits, n_h);
    hn[n] = (int)v;
    ch += (i64)bc_s[N + n] * v;
  }
#pragma unroll
  for (int i = 0; i < N / 4; ++i)
    reinterpret_cast<int4 *>(h + d * N)[i] = make_int4(hn[4 * i], hn[4 * i + 1], hn[4 * i + 2], hn[4 * i + 3]);
  const int yv = scan_output(ch, xsv, dq, sz, my, sy, state_bits, n_y);
  y_out[d] = (short)yv;
  if (had) {  // block-uniform
    v_s[tid] = yv;
    __syncthreads();
    wht_segments(v_s, p1, p1);
    v_out[d] = v_s[tid];
  }
  flush_count(c_xp, n_xp);
  flush_count(c_dt, n_dt);
  flush_count(c_state, n_h);
  flush_count(c_y, n_y);
}
