// The FP16 baseline (gpu/baseline_fp16.py): beside qsim.float_model (mixer, selective_scan,
// rmsnorm), i.e. transformers' MambaForCausalLM, in fp16 storage with fp32 arithmetic and an fp32
// residual and SSM state (residual_in_fp32, as mamba_ssm's kernels do).
// The decode step has the same fused structure as decode.cu (same GEMV cores, same kernel count),
// so the W8A8 speed-up measures the numerics, not better engineering on one side.
#include <cuda_fp16.h>

#include "common.cuh"

struct WH {  // fp16 weights and activations, fp32 accumulation (the FP16 baseline)
  typedef __half Act;
  typedef float Acc;
  static constexpr int COLS = 8;
  __device__ static int xpos(int k) { return k; }
  __device__ static float dot(int4 w, const __half *x, const u8 *, int, int) {
    const int4 a = *reinterpret_cast<const int4 *>(x);
    const __half2 *wh = reinterpret_cast<const __half2 *>(&w), *xh = reinterpret_cast<const __half2 *>(&a);
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 wf = __half22float2(wh[i]), xf = __half22float2(xh[i]);
      acc = fmaf(wf.x, xf.x, acc);
      acc = fmaf(wf.y, xf.y, acc);
    }
    return acc;
  }
};

constexpr int F16_N = 16;     // d_state
constexpr int F16_DT_PF = 8;  // dt_proj row vectors loaded before the prologue
constexpr int F16_CHUNK_U = 8;  // row vectors in flight per lane in the split-K GEMVs

__device__ __forceinline__ float silu_f(float x) { return x / (1.f + __expf(-x)); }
__device__ __forceinline__ float softplus_f(float x) { return x > 20.f ? x : log1pf(__expf(x)); }

// mode 0: r = embedding[tok]; mode 1: r = r_prev + out_acc. u = rmsnorm(r) * g, y = W u (fp16, or
// fp32 logits when raw). Dynamic shared memory 4 * dm + 2 * Kp + 128 bytes.
extern "C" __global__ void __launch_bounds__(1024)
    f16_norm_gemv(int mode, const int *tok, const __half *emb, const float *r_prev, const float *out_acc, float *r_out,
                  const __half *g, float eps, int dm, const void *W, int N, int Kp, void *y, int raw) {
  float *r_s = (float *)dyn_smem;
  __half *x_s = (__half *)(r_s + ((dm + 3) & ~3));
  float *scratch = (float *)(x_s + Kp);
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, nwarps = (gridDim.x * blockDim.x) >> 5;
  const int4 *Wv = (const int4 *)W;
  const int rv = Kp / WH::COLS;
  int4 pre[ROW_PF];
  rows_prefetch(pre, Wv, rv, N, warp);
  const size_t t = mode == 0 ? (size_t)tok[0] : 0;
  float ss = 0.f;
  for (int j = threadIdx.x; j < dm; j += blockDim.x) {
    const float v = mode == 0 ? __half2float(emb[t * dm + j]) : r_prev[j] + out_acc[j];
    r_s[j] = v;
    ss += v * v;
    if (blockIdx.x == 0) r_out[j] = v;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / (float)dm + eps);
  for (int j = threadIdx.x; j < Kp; j += blockDim.x)
    x_s[j] = __float2half(j < dm ? r_s[j] * inv * __half2float(g[j]) : 0.f);
  __syncthreads();
  gemv_rows<WH>(
      Wv, nullptr, N, rv, 0, 1, x_s, pre, warp, nwarps, [](int) { return 0; },
      [&](int row, float acc, int) {
        if (raw) ((float *)y)[row] = acc;
        else ((__half *)y)[row] = __float2half(acc);
      });
}

// Block b owns channels [128 b, 128 b + 128): conv (fp16 state shifted in place) + SiLU, then the
// x_proj partial sums over those columns, added into p_acc (fp32).
extern "C" __global__ void f16_conv_xproj(const __half *xz, __half *conv_state, const __half *conv_w,
                                          const __half *conv_b, int K, __half *xs_out, int di, const void *W, int R,
                                          int Kp, float *p_acc) {
  constexpr int KC = 128, LPR = KC / WH::COLS;
  __shared__ __align__(16) __half x_s[KC];
  const int c0 = blockIdx.x * KC, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int4 *Wv = (const int4 *)W;
  const int rv = Kp / WH::COLS, v0 = c0 / WH::COLS;
  int4 pre[F16_CHUNK_U];
  chunk_prefetch<LPR>(pre, Wv, rv, v0, 0, R, warp, nwarps);
  for (int k = threadIdx.x; k < KC; k += blockDim.x) {
    const size_t d = c0 + k;
    float q = 0.f;
    if (d < (size_t)di) {
      float acc = __half2float(conv_b[d]);
      for (int j = 0; j < K - 1; ++j) acc += __half2float(conv_state[j * di + d]) * __half2float(conv_w[d * K + j]);
      acc += __half2float(xz[d]) * __half2float(conv_w[d * K + K - 1]);
      for (int j = 0; j < K - 2; ++j) conv_state[j * di + d] = conv_state[(j + 1) * di + d];
      conv_state[(size_t)(K - 2) * di + d] = xz[d];
      q = silu_f(acc);
      xs_out[d] = __float2half(q);
    }
    x_s[k] = __float2half(q);
  }
  __syncthreads();
  gemv_chunk<WH, LPR, F16_CHUNK_U>(Wv, nullptr, rv, v0, 0, R, 0, 1, x_s, pre, warp, nwarps,
                      [&](int row, float acc) { atomicAdd(p_acc + row, acc); });
}

__device__ __forceinline__ float comp(const float4 &v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// One thread per channel: dt = softplus(dt_proj(dt_r) + b), state update with exp(dt A), y = C.h +
// D x, gated by SiLU(z), written as fp16. A_neg = -exp(A_log) (di, N) fp32, h (di, N) fp32.
// Dynamic shared memory 8 * N + 2 * rkp bytes.
extern "C" __global__ void f16_scan_step(const float *p_acc, int rk, int rkp, const __half *Wdt, const float *dt_b,
                                         const __half *xs, const __half *xz, float *h, const float *A_neg,
                                         const float *D, __half *y_out, int di) {
  constexpr int N = F16_N;
  float *bc_s = (float *)dyn_smem;       // B then C
  __half *dtr_s = (__half *)(bc_s + 2 * N);  // dt_r as fp16, zero padded to rkp
  const size_t d = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const bool ok = d < (size_t)di;
  const size_t dd = ok ? d : 0;
  float4 hq[N / 4], aq[N / 4];
#pragma unroll
  for (int i = 0; i < N / 4; ++i) {
    hq[i] = reinterpret_cast<const float4 *>(h + dd * N)[i];
    aq[i] = reinterpret_cast<const float4 *>(A_neg + dd * N)[i];
  }
  const int4 *wr = reinterpret_cast<const int4 *>(Wdt + dd * rkp);
  const int nv = rkp / WH::COLS;
  int4 wq[F16_DT_PF];
#pragma unroll
  for (int c = 0; c < F16_DT_PF; ++c)
    if (c < nv) wq[c] = __ldcs(wr + c);
  const float xv = __half2float(xs[dd]), zv = __half2float(xz[di + dd]), bias = dt_b[dd], dv = D[dd];
  for (int j = threadIdx.x; j < rkp; j += blockDim.x) dtr_s[j] = __float2half(j < rk ? p_acc[j] : 0.f);
  for (int j = threadIdx.x; j < 2 * N; j += blockDim.x) bc_s[j] = p_acc[rk + j];
  __syncthreads();
  float acc = bias;
#pragma unroll
  for (int c = 0; c < F16_DT_PF; ++c)
    if (c < nv) acc += WH::dot(wq[c], dtr_s + c * WH::COLS, nullptr, 0, 1);
  for (int c = F16_DT_PF; c < nv; ++c) acc += WH::dot(__ldcs(wr + c), dtr_s + c * WH::COLS, nullptr, 0, 1);
  const float dt = softplus_f(acc), dx = dt * xv;
  float hn[N], yv = dv * xv;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    hn[n] = __expf(dt * comp(aq[n / 4], n % 4)) * comp(hq[n / 4], n % 4) + dx * bc_s[n];
    yv += bc_s[N + n] * hn[n];
  }
  if (ok) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i)
      reinterpret_cast<float4 *>(h + d * N)[i] = make_float4(hn[4 * i], hn[4 * i + 1], hn[4 * i + 2], hn[4 * i + 3]);
    y_out[d] = __float2half(yv * silu_f(zv));
  }
}

// Block (c, r): out_proj columns [256 c, 256 c + 256) of rows [rows_per_block r, ...), partial sums
// added into out_acc (fp32).
extern "C" __global__ void f16_outproj(const __half *y, int di, const void *W, int N, int Kp, int rows_per_block,
                                       float *out_acc) {
  constexpr int KD = 32 * WH::COLS;
  __shared__ __align__(16) __half x_s[KD];
  const int k0 = blockIdx.x * KD, r0 = blockIdx.y * rows_per_block, r1 = min(N, r0 + rows_per_block);
  const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int4 *Wv = (const int4 *)W;
  const int rv = Kp / WH::COLS, v0 = k0 / WH::COLS;
  int4 pre[F16_CHUNK_U];
  chunk_prefetch<32>(pre, Wv, rv, v0, r0, r1, warp, nwarps);
  for (int k = threadIdx.x; k < KD; k += blockDim.x) x_s[k] = k0 + k < di ? y[k0 + k] : __float2half(0.f);
  __syncthreads();
  gemv_chunk<WH, 32, F16_CHUNK_U>(Wv, nullptr, rv, v0, r0, r1, 0, 1, x_s, pre, warp, nwarps,
                     [&](int row, float acc) { atomicAdd(out_acc + row, acc); });
}

// The prompt's scan: one thread per (d, n), N lanes per channel (as scan.cu). dt (L, di) fp32 is
// softplus(dt_proj) from cuBLAS; B, C rows of stride ldbc; y = (C.h + D x) * SiLU(z) as fp16.
extern "C" __global__ void f16_scan_prefill(const __half *xs, int ldxs, const float *dt, int lddt, const __half *B,
                                            const __half *C, int ldbc, const __half *z, int ldz, float *h,
                                            const float *A_neg, const float *D, __half *y, int ldy, int L, int di,
                                            int N) {
  const int gt = blockIdx.x * blockDim.x + threadIdx.x;
  const int ch = gt / N, n = gt % N;
  const bool ok = ch < di;
  const size_t d = ok ? ch : 0;
  const float a = A_neg[d * N + n], dv = D[d];
  float hv = h[d * N + n];
  for (int t = 0; t < L; ++t) {
    const float dtv = dt[(size_t)t * lddt + d], xv = __half2float(xs[(size_t)t * ldxs + d]);
    hv = __expf(dtv * a) * hv + dtv * xv * __half2float(B[(size_t)t * ldbc + n]);
    float part = __half2float(C[(size_t)t * ldbc + n]) * hv;
    for (int o = N / 2; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
    if (ok && n == 0) y[(size_t)t * ldy + d] = __float2half((part + dv * xv) * silu_f(__half2float(z[(size_t)t * ldz + d])));
  }
  if (ok) h[d * N + n] = hv;
}
