// Beside qsim.spec.requantize (= qsim.fixed.ops.requantize), qsim.fixed.ops.lut and the residual
// add of qsim.fixed.executor (r = saturate(r + out, RESIDUAL_BITS)): the epilogue of every integer
// GEMM of the prefill path (torch._int_mm gives the int32 accumulators).
#include "common.cuh"

// acc: int32 rows (stride lda). acc_hi: optional second accumulator of an int4 weight split as
// hi * 2**hi_shift + lo (gpu.layout.split_int4): acc += acc_hi << hi_shift. bias: optional per
// column. m, s: per column when per_col, else m[0], s[0]. lut: optional 256-entry table applied to
// the int8 result (index q + 128), whose input is also written to pre (optional, int8, stride ldo). out_kind: 0 int8, 1 int16 (dt), 2 int32 (out may be null for 2).
// resid: optional residual rows (stride ldr) updated in place, r = sat(r + q, bits).
// Grid (ceil(cols / blockDim), rows).
extern "C" __global__ void requant_rows(const int *acc, int lda, const int *acc_hi, int hi_shift, const int *bias,
                                        const int *m, const int *s, int per_col, int bits, const short *lut,
                                        i8 *pre, void *out, int ldo, int out_kind, int *resid, int ldr, int cols,
                                        u64 *c_out, u64 *c_resid) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  const size_t row = blockIdx.y;
  unsigned n_out = 0, n_res = 0;
  if (col < cols) {
    i64 a = acc[row * lda + col];
    if (acc_hi) a += (i64)acc_hi[row * lda + col] << hi_shift;
    if (bias) a += bias[col];
    const int k = per_col ? col : 0;
    i64 q = requant(a, m[k], s[k], bits, n_out);
    const size_t o = row * ldo + col;
    if (lut) {
      if (pre) pre[o] = (i8)q;
      q = lut[q + 128];
    }
    if (out_kind == 0) ((i8 *)out)[o] = (i8)q;
    else if (out_kind == 1) ((short *)out)[o] = (short)q;
    else if (out) ((int *)out)[o] = (int)q;
    if (resid) {
      int *r = resid + row * ldr + col;
      *r = (int)sat_signed(*r + q, bits, n_res);
    }
  }
  flush_count(c_out, n_out);
  flush_count(c_resid, n_res);
}
