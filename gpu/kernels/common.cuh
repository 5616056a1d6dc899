// Shared device code of the `fixed` kernels and the FP16 baseline.
//
// The integer helpers are qsim.spec's rules in CUDA: rshift_round is spec.rshift_round
// (round half up, arithmetic shift on signed 64-bit, s == 0 is the identity), sat_signed is
// spec.saturate, requant is spec.requantize. The spec's constants arrive as -D defines made by
// gpu.runtime.spec_defines() from qsim.spec, so they are written down only once.
//
// NVRTC constraints: no includes at all here (fp16.cu alone adds cuda_fp16.h, found on the CUDA
// include path CuPy passes), fixed-width types spelled out, every kernel extern "C".
#pragma once

#if !defined(Q_RESIDUAL_BITS) || !defined(Q_GATED_BITS) || !defined(Q_DECAY_BITS) || !defined(Q_NORM_SHIFT) || \
    !defined(Q_DT_BITS) || !defined(Q_GATE_BITS) || !defined(Q_SCAN_ACC_STATE_BITS)
#error "compile with the defines of gpu.runtime.spec_defines(): the spec's constants come from qsim.spec"
#endif

typedef long long i64;
typedef unsigned long long u64;
typedef signed char i8;
typedef unsigned char u8;
typedef short dt_t;  // dt = softplus(dt_pre): unsigned Q_DT_BITS-bit values, read from an int16 table
static_assert(Q_DT_BITS <= 15, "dt_t and scan_update's 32-bit decay product hold at most 15-bit dt");
typedef short gate_t;  // sz = SiLU(z), the scan output's gate: signed Q_GATE_BITS-bit values
static_assert(Q_GATE_BITS <= 16, "gate_t holds at most 16-bit gates");

extern __shared__ int4 dyn_smem[];  // a kernel's dynamic shared memory, 16-byte aligned

// ----------------------------------------------------------------------------- integer spec
__device__ __forceinline__ i64 rshift_round(i64 v, int s) { return s > 0 ? (v + (1LL << (s - 1))) >> s : v; }

__device__ __forceinline__ i64 sat_signed(i64 v, int bits, unsigned &n) {
  const i64 hi = (1LL << (bits - 1)) - 1, lo = -hi - 1;
  if (v > hi) { ++n; return hi; }
  if (v < lo) { ++n; return lo; }
  return v;
}

__device__ __forceinline__ i64 requant(i64 acc, i64 m, int s, int bits, unsigned &n) {
  return sat_signed(rshift_round(acc * m, s), bits, n);
}

// Adds every lane's saturation count to *c with one atomic per warp. All 32 lanes must arrive,
// so kernels that count never return early and use block sizes that are multiples of 32.
__device__ __forceinline__ void flush_count(u64 *c, unsigned n) {
  n = __reduce_add_sync(0xffffffffu, n);
  if (c != nullptr && n != 0 && (threadIdx.x & 31) == 0) atomicAdd(c, (u64)n);
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block, returned to every thread; scratch holds 32 values. Fixed order, so
// floating-point sums are deterministic too.
template <typename T> __device__ T block_sum(T v, T *scratch) {
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  T t = 0;
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) t += scratch[i];
  return t;
}

// ----------------------------------------------------------------------------- RMSNorm (ops.rmsnorm)
// One residual row r[0..d) (int32, 24-bit values) to int8; store(j, q) receives each output.
// ss ~= mant * 2**sh with mant in [256, 1024) and sh even: r / sqrt(ss) in Q15 is
// rshift_round(r * rsqrt_tab[mant - 256], Q_NORM_SHIFT + sh / 2).
template <class Store>
__device__ void rmsnorm_row(const int *r, int d, const short *g, i64 eps, int m, int s, const int *rsqrt_tab,
                            i64 *scratch, unsigned &nsat, Store store) {
  i64 ss = 0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) ss += (i64)r[j] * r[j];
  ss = block_sum(ss, scratch) + eps;  // eps >= 1, so ss >= 1
  int sh = 64 - __clzll(ss) - 10;
  sh += sh & 1;
  const i64 mant = sh >= 0 ? ss >> sh : ss << (-sh);
  const i64 t = rsqrt_tab[mant - 256];
  const int shift = Q_NORM_SHIFT + sh / 2;  // sh is even: exact, and >= 0
  for (int j = threadIdx.x; j < d; j += blockDim.x)
    store(j, (int)requant(rshift_round((i64)r[j] * t, shift) * g[j], m, s, 8, nsat));
}

// ----------------------------------------------------------------------------- conv (ops.conv)
// Accumulator of token t of channel d: bias + sum_j xp[t + j] * w[d, j], where xp is the K-1
// state rows followed by the new inputs x (row stride ldx).
__device__ __forceinline__ i64 conv_acc(const i8 *state, const i8 *x, int ldx, const i8 *w, const int *b, int K,
                                        int di, int d, int t) {
  i64 acc = b[d];
  for (int j = 0; j < K; ++j) {
    const int i = t + j;
    const int v = i < K - 1 ? state[(size_t)i * di + d] : x[(size_t)(i - (K - 1)) * ldx + d];
    acc += (i64)v * w[d * K + j];
  }
  return acc;
}

// New conv state of channel d after L inputs: the last K-1 rows of xp. In place is safe:
// row j reads row L + j > j, which ascending j has not overwritten yet.
__device__ __forceinline__ void conv_save(i8 *state, const i8 *x, int ldx, int K, int di, int d, int L) {
  for (int j = 0; j < K - 1; ++j) {
    const int i = L + j;
    state[(size_t)j * di + d] = i < K - 1 ? state[(size_t)i * di + d] : x[(size_t)(i - (K - 1)) * ldx + d];
  }
}

// ----------------------------------------------------------------------------- scan (ops.scan)
// One state element h[d, n] after one token: Q15 decay exp(-dt |A|) by the 2**-frac table, plus
// rshift_round(dt * x * B * m_h, s_h), saturated to state_bits (counted in nsat). dx = dt * x.
// Bounds (dt < 2**15, a < 2**16, 9 <= frac <= 30): dt * a + 2**(frac - 9) < 2**31 + 2**21 overflows
// int32 but not uint32 and is non-negative, so unsigned 32-bit equals ops.decay's int64 (and is
// cheaper in the decode step); dx * b < 2**29 fits int32, times m_h < 2**31 needs i64.
__device__ __forceinline__ i64 scan_update(int dt, int dx, int a, int b, i64 h, int frac, int m_h, int s_h,
                                           const int *exp_tab, int state_bits, unsigned &nsat) {
  const int er = (int)(((unsigned)dt * (unsigned)a + (1u << (frac - 9))) >> (frac - 8));
  const i64 decay = rshift_round(exp_tab[er & 255], min(er >> 8, 40));
  const i64 v = rshift_round(decay * h, Q_DECAY_BITS) + rshift_round((i64)(dx * b) * m_h, s_h);
  return sat_signed(v, state_bits, nsat);
}

// The gated output requantize(rshift_round(C.h + D x, spec.scan_acc_shift(state_bits)) * SiLU(z), m_y,
// s_y, GATED_BITS), with the channel's own m_y, s_y; scan_acc_shift(sb) is max(0, sb - Q_SCAN_ACC_STATE_BITS)
// (gpu.runtime checks the form). C.h reaches 2**(state_bits + 11) (N <= 32, state_bits <= 28), so the sum
// stays 64-bit until shifted; shifted it fits 25 bits, and times a 16-bit gate and m_y stays below 2**62
// (artifact_check proves it per channel): i64 too.
__device__ __forceinline__ int scan_output(i64 ch, int xs, i64 dq, int sz, int m_y, int s_y, int state_bits,
                                           unsigned &nsat) {
  const i64 acc = rshift_round(ch + dq * xs, max(0, state_bits - Q_SCAN_ACC_STATE_BITS));
  return (int)requant(acc * sz, m_y, s_y, Q_GATED_BITS, nsat);
}

// ----------------------------------------------------------------------------- Hadamard (hadamard.fwht)
// Radix-2 butterflies inside each segment of `seg` values of v[0..total) (shared memory), in the
// order of qsim.hadamard.fwht. Values stay below 2**15 * n <= 2**28: int32 is exact.
__device__ void wht_segments(int *v, int seg, int total) {
  for (int h = 1; h < seg; h <<= 1) {
    for (int i = threadIdx.x; i < total / 2; i += blockDim.x) {
      const int a = (i / h) * 2 * h + i % h;
      const int x = v[a], y = v[a + h];
      v[a] = x + y;
      v[a + h] = x - y;
    }
    __syncthreads();
  }
}

// Output k of the whole transform after wht_segments(v, p1, n): sum_b O[a, b] * v[b * p1 + j] with
// k = a * p1 + j, O = kron(H_m, H_(p/p1)) of order S (gpu.layout.hadamard_plan).
__device__ __forceinline__ int hadamard_out(const int *v, const i8 *O, int S, int p1, int k) {
  const int a = k / p1, j = k - a * p1;
  int y = 0;
  for (int b = 0; b < S; ++b) y += O[a * S + b] * v[b * p1 + j];
  return y;
}

// ----------------------------------------------------------------------------- weight formats
// A 16-byte weight vector covers COLS columns of one row. Activations sit in shared memory in
// xpos() order so that the columns of one vector are contiguous. dot() returns the vector's
// integer (or float) dot product already weighted by its group scale.
__device__ __forceinline__ int dp4a4(int4 w, int4 a, int acc) {
  acc = __dp4a(w.x, a.x, acc);
  acc = __dp4a(w.y, a.y, acc);
  acc = __dp4a(w.z, a.z, acc);
  return __dp4a(w.w, a.w, acc);
}

struct W8 {  // int8 weights (one scale per tensor: gs unused)
  typedef i8 Act;
  typedef int Acc;
  static constexpr int COLS = 16;
  __device__ static int xpos(int k) { return k; }
  __device__ static int dot(int4 w, const i8 *x, const u8 *, int, int) {
    return dp4a4(w, *reinterpret_cast<const int4 *>(x), 0);
  }
};

// Two signed int4 per byte, even column in the low nibble (qsim.qweights.pack_int4); uint8 group
// scales per (row, group), group a multiple of 32. Per 8 columns the activations are stored as the
// 4 even columns then the 4 odd ones, matching the low and high nibbles of one 32-bit word. The
// nibbles are used in place as int8 values q * 16 (low nibble shifted up), so the sum is 16x the
// dot product, exactly; >> 4 undoes it.
struct W4 {
  typedef i8 Act;
  typedef int Acc;
  static constexpr int COLS = 32;
  __device__ static int xpos(int k) {
    const int j = k & 7;
    return (k & ~7) + (j & 1) * 4 + (j >> 1);
  }
  __device__ static int word(int w, int xe, int xo, int acc) {
    const unsigned u = (unsigned)w;
    acc = __dp4a((int)((u << 4) & 0xF0F0F0F0u), xe, acc);
    return __dp4a((int)(u & 0xF0F0F0F0u), xo, acc);
  }
  __device__ static int dot(int4 w, const i8 *x, const u8 *gs_row, int col, int group) {
    const int4 a = reinterpret_cast<const int4 *>(x)[0], b = reinterpret_cast<const int4 *>(x)[1];
    int acc = word(w.x, a.x, a.y, 0);
    acc = word(w.y, a.z, a.w, acc);
    acc = word(w.z, b.x, b.y, acc);
    acc = word(w.w, b.z, b.w, acc);
    return (acc >> 4) * (int)gs_row[col / group];
  }
};

// ----------------------------------------------------------------------------- GEMV cores
// Decode at batch 1 is memory-bound: 16-byte streaming loads (evict-first: each weight is read
// once per token), dp4a on int8, several loads in flight per lane, and the first ones issued
// *before* a kernel's prologue so that HBM is busy while the prologue (norm, conv, Hadamard)
// computes the activations.
constexpr int ROW_PF = 4;  // vectors per lane of a warp's first row loaded before the prologue

// Whole rows, one warp per row: rows warp, warp + nwarps, ...; rv vectors per row.
__device__ __forceinline__ void rows_prefetch(int4 (&pre)[ROW_PF], const int4 *W, int rv, int N, int warp) {
  const int lane = threadIdx.x & 31;
  if (warp >= N) return;
#pragma unroll
  for (int c = 0; c < ROW_PF; ++c)
    if (lane + 32 * c < rv) pre[c] = __ldcs(W + (size_t)warp * rv + lane + 32 * c);
}

// fetch(row) runs at the start of a row (its loads overlap the row's), epi(row, acc, fetched) on lane 0.
template <class F, class Fetch, class Epi>
__device__ void gemv_rows(const int4 *W, const u8 *gs, int N, int rv, int G, int group, const typename F::Act *x,
                          const int4 (&pre)[ROW_PF], int warp, int nwarps, Fetch fetch, Epi epi) {
  const int lane = threadIdx.x & 31;
  for (int row = warp; row < N; row += nwarps) {
    const auto fetched = fetch(row);
    const int4 *wr = W + (size_t)row * rv;
    const u8 *gr = gs ? gs + (size_t)row * G : nullptr;
    typename F::Acc acc = 0;
    int i0 = 0;
    if (row == warp) {  // the first row: its first vectors are already in registers
#pragma unroll
      for (int c = 0; c < ROW_PF; ++c) {
        const int i = lane + 32 * c;
        if (i < rv) acc += F::dot(pre[c], x + F::xpos(i * F::COLS), gr, i * F::COLS, group);
      }
      i0 = 32 * ROW_PF;
    }
#pragma unroll 4
    for (int i = i0 + lane; i < rv; i += 32) acc += F::dot(__ldcs(wr + i), x + F::xpos(i * F::COLS), gr, i * F::COLS, group);
    acc = warp_sum(acc);
    if (lane == 0) epi(row, acc, fetched);
  }
}

// A chunk of LPR * COLS columns starting at vector v0 of rows [r0, r1): LPR lanes per row,
// 32 / LPR rows per warp step, U warp steps loaded before any is used (U loads in flight per lane;
// the first U come from chunk_prefetch, issued before the kernel's prologue). The chunk's
// activations x are in shared memory (xpos order); epi(row, partial) runs on the row's first lane.
template <int LPR, int U>
__device__ __forceinline__ void chunk_prefetch(int4 (&pre)[U], const int4 *W, int rv, int v0, int r0, int r1,
                                               int warp, int nwarps) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < U; ++c) {
    const int row = r0 + (warp + c * nwarps) * (32 / LPR) + lane / LPR;
    if (row < r1) pre[c] = __ldcs(W + (size_t)row * rv + v0 + lane % LPR);
  }
}

template <class F, int LPR, int U, class Epi>
__device__ void gemv_chunk(const int4 *W, const u8 *gs, int rv, int v0, int r0, int r1, int G, int group,
                           const typename F::Act *x, const int4 (&pre)[U], int warp, int nwarps, Epi epi) {
  constexpr int RPI = 32 / LPR;  // rows per warp step
  const int lane = threadIdx.x & 31, sub = lane % LPR;
  const int col = (v0 + sub) * F::COLS;
  const typename F::Act *xv = x + F::xpos(sub * F::COLS);
  auto row_of = [&](int step) { return r0 + (warp + step * nwarps) * RPI + lane / LPR; };
  auto use = [&](const int4 (&w)[U], int step0) {  // all 32 lanes: the shuffles need them
#pragma unroll
    for (int c = 0; c < U; ++c) {
      const int row = row_of(step0 + c);
      const bool ok = row < r1;
      typename F::Acc acc = ok ? F::dot(w[c], xv, gs ? gs + (size_t)row * G : nullptr, col, group) : 0;
#pragma unroll
      for (int o = LPR / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (ok && sub == 0) epi(row, acc);
    }
  };
  use(pre, 0);
  for (int step0 = U; r0 + (warp + step0 * nwarps) * RPI < r1; step0 += U) {  // warp-uniform test
    int4 w[U];
#pragma unroll
    for (int c = 0; c < U; ++c) {
      const int row = row_of(step0 + c);
      w[c] = row < r1 ? __ldcs(W + (size_t)row * rv + v0 + sub) : make_int4(0, 0, 0, 0);
    }
    use(w, step0);
  }
}
