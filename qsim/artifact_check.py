"""Validation of a quantized artifact against the spec's bounds (qsim/SPEC.md, "Validity").

64-bit integer arithmetic is exact only while every product stays below 2**62;
a requantization with an out-of-range multiplier would otherwise wrap around
silently (2**40 * (2**31 - 1) gives -1 where 8,388,607 is right). Each bound
below is the worst case over every input the declared widths allow
(activations) and the stored values (constants such as biases and Dq), so an
artifact that passes cannot overflow on any input. The first violation is
refused with one line naming the parameter and its layer. A Mamba-2 artifact
(SPEC.md 15.7) is checked the same way with 5.3's bounds for its SSD and gated
norm (qsim.fixed.ssd.validate_ssd, validate_gated_norm); with other than 8-bit
activations (quamba numerics only) its tensors' shapes are checked.
"""

from __future__ import annotations

import numpy as np

from qsim import spec, tables
from qsim.errors import QsimError

INT8, INT16 = 1 << 7, 1 << 15  # largest magnitudes of the signed widths
MULT_MAX = 1 << 31  # multipliers lie in [1, 2**31)
NORMED_MAX = 1 << 16  # RMSNorm's Q15 normalized value (|r|/sqrt(sum r^2) <= 1, table error well below 2x)


class _Checker:
    def __init__(self, qm):
        self.qm, self.m, self.cfg = qm, qm.manifest, qm.config
        self.at = ""  # the layer being checked, for a missing manifest key

    def fail(self, name: str, why: str):
        raise QsimError(f"{name}: {why}")

    def tensor(self, name: str, shape: tuple) -> np.ndarray:
        t = self.qm.t(name)
        if tuple(t.shape) != shape:
            self.fail(name, f"shape {tuple(t.shape)}, expected {shape} from the model configuration")
        if t.dtype.kind not in "iu":
            self.fail(name, f"dtype {t.dtype}, expected an integer tensor")
        return t.astype(np.int64)

    def in_range(self, name: str, v, lo: int, hi: int):
        v = np.asarray(v, dtype=np.int64)
        if v.size and (v.min() < lo or v.max() > hi):
            bad = int(v.min()) if v.min() < lo else int(v.max())
            self.fail(name, f"value {bad} outside [{lo}, {hi}]")

    def requant(self, name: str, acc_max: int, m, s):
        """A requantization sat(rshift_round(acc * m, s)) with |acc| <= acc_max: one (m, s) pair, or one per
        output channel (arrays), where the error names the first channel that breaks a bound."""
        m, s = np.asarray(m, np.int64), np.asarray(s, np.int64)

        def label(what: str, j: int) -> str:
            return f"{name} {what}" if m.ndim == 0 else f"{name} {what}, channel {j}"

        for what, v, lo, hi in (("multiplier", m, 1, MULT_MAX - 1), ("shift", s, 0, 62)):
            bad = np.flatnonzero((v < lo) | (v > hi))
            if bad.size:
                self.fail(label(what, bad[0]), f"value {int(v.flat[bad[0]])} outside [{lo}, {hi}]")
        # acc_max * m + half < 2**62, i.e. m <= (2**62 - 1 - half) // acc_max: exact in int64
        half = np.where(s > 0, np.left_shift(1, np.maximum(s - 1, 0)), 0)
        bad = np.flatnonzero(m > (spec.PRODUCT_LIMIT - 1 - half) // max(int(acc_max), 1))
        if bad.size:
            j = bad[0]
            worst = int(acc_max) * int(m.flat[j]) + int(half.flat[j])
            self.fail(label("multiplier", j), f"{int(m.flat[j])} times the largest accumulator {int(acc_max)}, "
                      f"plus the rounding half, is {worst:.3e}, not below 2**62")

    def linear_acc(self, name: str, rows: int, cols: int, x_max: int = INT8) -> int:
        """Largest |x @ W.T| for |x| <= x_max, int8 or grouped int4 weights."""
        fmt = self.m["linears"].get(name)
        if fmt is None:
            self.fail(name, "missing from the manifest's linears")
        if fmt["format"] == "int4":
            if fmt["cols"] != cols or fmt["group"] < 1:
                self.fail(name, f"int4 layout cols {fmt['cols']}, group {fmt['group']}; expected {cols} columns")
            self.tensor(f"{name}.q4", (rows, -(-cols // 2)))
            gs = self.tensor(f"{name}.gs", (rows, -(-cols // fmt["group"])))
            self.in_range(f"{name}.gs", gs, 0, 255)
            return cols * x_max * 8 * 255
        w = self.tensor(f"{name}.q", (rows, cols))
        self.in_range(f"{name}.q", w, -128, 127)
        return cols * x_max * INT8

    def norm(self, where: str, g_name: str, p: dict):
        d = self.cfg.d_model
        g = self.tensor(g_name, (d,))
        self.in_range(g_name, g, -(INT16 - 1), INT16 - 1)
        self.in_range(f"{where}.eps_int", p["eps_int"], 1, spec.PRODUCT_LIMIT)
        ss = d * (1 << 2 * (spec.RESIDUAL_BITS - 1)) + p["eps_int"]
        if ss >= spec.PRODUCT_LIMIT:
            self.fail(f"{where}.eps_int", f"the sum of squares over d_model {d} can reach {ss:.3e}")
        self.requant(where, NORMED_MAX * int(np.abs(g).max(initial=0)), p["m"], p["s"])

    def tables(self):
        for name, want in (("exp2_frac", tables.exp2_frac_table()), ("rsqrt", tables.rsqrt_table())):
            got = np.asarray(self.m["tables"][name], dtype=np.int64)
            if got.shape != want.shape or not np.array_equal(got, want):
                self.fail(f"tables.{name}", "differs from the table the spec defines")

    def layer(self, i: int):
        self.at = p = f"layers.{i}"
        c, L = self.cfg, self.m["layers"][i]
        di, n, rk = c.d_inner, c.d_state, c.dt_rank
        self.norm(f"{p}.norm", f"{p}.norm.g", L["norm"])
        rq = lambda name, rows: (self.tensor(f"{p}.{name}.rq_m", (rows,)),
                                 self.tensor(f"{p}.{name}.rq_s", (rows,)))
        self.requant(f"{p}.in_proj", self.linear_acc(f"{p}.in_proj", 2 * di, c.d_model), *rq("in_proj", 2 * di))
        cw = self.tensor(f"{p}.conv.w", (di, c.d_conv))
        cb = self.tensor(f"{p}.conv.b", (di,))
        self.in_range(f"{p}.conv.w", cw, -128, 127)
        self.requant(f"{p}.conv", int(np.abs(cb).max()) + c.d_conv * INT8 * INT8, L["conv"]["m"], L["conv"]["s"])
        self.requant(f"{p}.x_proj", self.linear_acc(f"{p}.x_proj", rk + 2 * n, di), *rq("x_proj", rk + 2 * n))
        db = self.tensor(f"{p}.dt_proj.b", (di,))
        self.requant(f"{p}.dt_proj", self.linear_acc(f"{p}.dt_proj", di, rk) + int(np.abs(db).max()),
                     L["dt_proj"]["m"], L["dt_proj"]["s"])
        for name, lo, hi in (("silu_conv", -128, 127), ("softplus_dt", 0, spec.DT_MAX),
                             ("silu_z", -spec.GATE_MAX - 1, spec.GATE_MAX)):
            t = np.asarray(L["tables"][name], dtype=np.int64)
            if t.shape != (256,):
                self.fail(f"{p}.tables.{name}", f"{t.size} entries, expected 256")
            self.in_range(f"{p}.tables.{name}", t, lo, hi)
        self.scan(p, L["scan"])
        y_max = INT16 * (di if self.m["hadamard"] else 1)  # the Hadamard sums di int16 values
        self.requant(f"{p}.out_in", y_max, L["out_in"]["m"], L["out_in"]["s"])
        self.requant(f"{p}.out_proj", self.linear_acc(f"{p}.out_proj", c.d_model, di), *rq("out_proj", c.d_model))

    def scan(self, p: str, sc: dict):
        c, sb = self.cfg, self.m["state_bits"]
        di, n = c.d_inner, c.d_state
        self.in_range(f"{p}.scan.a_frac_bits", sc["a_frac_bits"], spec.A_FRAC_MIN, spec.A_FRAC_MAX)
        self.in_range(f"{p}.A.q", self.tensor(f"{p}.A.q", (di, n)), 0, (1 << 16) - 1)
        dq = self.tensor(f"{p}.D.q", (di,))
        self.requant(f"{p}.scan.dBx", spec.DT_MAX * INT8 * INT8, sc["m_h"], sc["s_h"])
        limit = spec.scan_dq_limit(n, sb)
        if int(np.abs(dq).max()) > limit:
            self.fail(f"{p}.D.q", f"max |Dq| {int(np.abs(dq).max())} exceeds {limit}: with d_state {n} and state_bits "
                      f"{sb}, C.h + D*x >> {spec.scan_acc_shift(sb)} could leave {spec.SCAN_ACC_BITS} signed bits")
        self.requant(f"{p}.scan.y", (1 << (spec.SCAN_ACC_BITS - 1)) * INT16,
                     self.tensor(f"{p}.scan.m_y", (di,)), self.tensor(f"{p}.scan.s_y", (di,)))

    def mamba2(self):
        """A Mamba-2 artifact: every tensor's shape; with 8-bit activations every integer constant of the
        fixed datapath (SPEC.md 15.7) against 5.1 and 5.3, naming the layer and the constant."""
        m, c = self.m, self.cfg
        fixed = m["bits"]["act_bits"] == 8
        if fixed:
            self.in_range("state_bits", m["state_bits"], spec.SSD_STATE_BITS_MIN, spec.SSD_STATE_BITS_MAX)
            if m["residual"]["bits"] != spec.RESIDUAL_BITS:
                self.fail("residual.bits", f"{m['residual']['bits']}, expected {spec.RESIDUAL_BITS}")
            self.hadamard_size()
            self.tables()
        self.in_range("embedding.q", self.tensor("embedding.q", (c.vocab_size, c.d_model)), -128, 127)
        if fixed:
            self.requant("embedding", INT8, m["embedding"]["m"], m["embedding"]["s"])
        for i in range(c.n_layer):
            self.layer2(i, fixed)
        self.at = ""
        if fixed:
            self.norm("final_norm", "norm_f.g", m["final_norm"])
        logits = self.linear_acc("lm_head", c.vocab_size, c.d_model)
        if fixed and logits >= 1 << 53:
            self.fail("lm_head", f"logit accumulators can reach {logits:.3e}, beyond 2**53")

    def layer2(self, i: int, fixed: bool):
        """Layer i of a Mamba-2 artifact (SPEC.md 15.7): shapes, and the datapath constants when `fixed`."""
        self.at = p = f"layers.{i}"
        c = self.cfg
        di, cd, nh, k = c.d_inner, c.conv_dim, c.nheads, c.d_conv
        in_acc = self.linear_acc(f"{p}.in_proj", c.d_in_proj, c.d_model)
        out_acc = self.linear_acc(f"{p}.out_proj", c.d_model, di)
        self.in_range(f"{p}.conv.w", self.tensor(f"{p}.conv.w", (cd, k)), -128, 127)
        cb = self.tensor(f"{p}.conv.b", (cd,))
        for name, shape in (("x.scale", (di,)), ("B.scale", (c.ngroups,)), ("C.scale", (c.ngroups,)),
                            ("dt_bias", (nh,)), ("gnorm", (di,)), ("norm", (c.d_model,))):
            t = self.qm.t(f"{p}.{name}")  # informative float tensors: shape only
            if tuple(t.shape) != shape or not np.isfinite(t).all():
                self.fail(f"{p}.{name}", f"shape {tuple(t.shape)} (expected {shape}) or not finite")
        if not fixed:
            return
        from qsim.fixed.ssd import validate_gated_norm, validate_ssd

        L = self.m["layers"][i]
        rq = lambda name, rows: (self.tensor(f"{p}.{name}.rq_m", (rows,)),
                                 self.tensor(f"{p}.{name}.rq_s", (rows,)))
        self.norm(f"{p}.norm", f"{p}.norm.g", L["norm"])
        self.requant(f"{p}.in_proj", in_acc, *rq("in_proj", c.d_in_proj))
        self.requant(f"{p}.conv", int(np.abs(cb).max(initial=0)) + k * INT8 * INT8, *rq("conv", cd))
        tabs = self.qm.t(f"{p}.silu_conv")
        if tabs.ndim != 2 or tabs.shape[1] != 256 or not 1 <= tabs.shape[0] <= cd or tabs.dtype.kind not in "iu":
            self.fail(f"{p}.silu_conv", f"{tabs.dtype} {tuple(tabs.shape)}, expected an integer (groups, 256) table "
                      f"with 1 <= groups <= conv_dim {cd}")
        self.in_range(f"{p}.silu_conv", tabs, -128, 127)
        self.in_range(f"{p}.conv.group", self.tensor(f"{p}.conv.group", (cd,)), 0, tabs.shape[0] - 1)
        shapes = {"dt_table": (nh, 256), "a_q": (nh,), "m_h": (di,), "s_h": (di,), "Dq": (di,), "m_y": (di,),
                  "s_y": (di,)}
        ssd = {key: self.tensor(f"{p}.ssd.{key}", shapes[key]) for key in shapes}
        ssd.update(frac=L["ssd"]["frac"], state_bits=self.m["state_bits"],
                   exp_tab=np.asarray(self.m["tables"]["exp2_frac"], np.int64))
        validate_ssd(ssd, c.d_state, c.ngroups, where=f"{p}.ssd")
        self.in_range(f"{p}.silu_z", self.tensor(f"{p}.silu_z", (256,)), -spec.GATE_MAX - 1, spec.GATE_MAX)
        gn = c.ngroups if c.norm_per_group else 1
        gnorm = {"w": self.tensor(f"{p}.gated_norm.w", (di,)), "eps_int": self.tensor(f"{p}.gated_norm.eps_int", (gn,)),
                 "m": L["gated_norm"]["m"], "s": L["gated_norm"]["s"]}
        validate_gated_norm(gnorm, di, where=f"{p}.gated_norm")
        y_max = INT16 * (di if self.m["hadamard"] else 1)  # the Hadamard sums d_inner int16 values
        self.requant(f"{p}.out_in", y_max, L["out_in"]["m"], L["out_in"]["s"])
        self.requant(f"{p}.out_proj", out_acc, *rq("out_proj", c.d_model))

    def hadamard_size(self):
        if self.m["hadamard"]:
            from qsim import hadamard

            if not hadamard.supported(self.cfg.d_inner):
                self.fail("hadamard", f"d_inner {self.cfg.d_inner} is not 2**k, 12*2**k or 20*2**k")

    def run(self):
        m, c = self.m, self.cfg
        if c.family == "mamba2":
            return self.mamba2()
        if m["bits"]["act_bits"] != 8:
            return  # the fixed datapath (all these bounds) is defined for 8-bit activations only
        self.in_range("state_bits", m["state_bits"], spec.STATE_BITS_MIN, spec.STATE_BITS_MAX)
        self.hadamard_size()
        self.tables()
        self.in_range("embedding.q", self.tensor("embedding.q", (c.vocab_size, c.d_model)), -128, 127)
        self.requant("embedding", INT8, m["embedding"]["m"], m["embedding"]["s"])
        for i in range(c.n_layer):
            self.layer(i)
        self.at = ""
        self.norm("final_norm", "norm_f.g", m["final_norm"])
        logits = self.linear_acc("lm_head", c.vocab_size, c.d_model)
        if logits >= 1 << 53:  # the reference sums exactly in float64 (spec.exact_int_matmul)
            self.fail("lm_head", f"logit accumulators can reach {logits:.3e}, beyond 2**53")


def validate(qm) -> None:
    """Raise QsimError naming the first parameter (and layer) outside the spec's bounds."""
    checker = _Checker(qm)
    try:
        checker.run()
    except KeyError as exc:
        where = f" (manifest layers[{checker.at.split('.')[1]}])" if checker.at else ""
        raise QsimError(f"manifest: key {exc} is missing{where}") from None
