"""SmoothQuant-SSM (Xiao et al., SmoothQuant, ICML 2023, as Quamba's comparison applies it to Mamba).

Per-channel factors s = max|X|^a / max|W|^(1-a) migrate activation outliers
into the weights of the two linears whose input can absorb 1/s offline:
in_proj (through the RMSNorm weight) and out_proj (through the gate: the
gated scan output is divided by s, which the integer datapath realizes as
its per-channel scan output multiplier). x_proj's input follows a SiLU and
cannot be smoothed offline. Absmax scales, no rotation, no clipping.
"""

from calib.recipes import Recipe
from calib.recipes.fuse import smooth_in_proj, smooth_out_proj
from calib.recipes.observe import channel_stats


def smooth(lm, s, windows):
    n = lm.config.n_layer
    st = channel_stats(lm, windows, absmax=("u", "y"), desc="smoothquant")  # y does not change with u's smoothing
    lm, spread_in = smooth_in_proj(lm, st.layers("u", n), s.smooth_alpha)
    lm, spread_out = smooth_out_proj(lm, st.layers("y", n), s.smooth_alpha)
    return lm, [f"in_proj input smoothed (alpha {s.smooth_alpha}; max/min factor up to {spread_in.max():.3g})",
                f"out_proj input smoothed (alpha {s.smooth_alpha}; max/min factor up to {spread_out.max():.3g})"]


RECIPES = (Recipe("smoothquant", "per-channel smoothing of in_proj and out_proj inputs folded into weights",
                  "Xiao et al., SmoothQuant, ICML 2023 (arXiv 2211.10438); SmoothQuant-SSM as in Quamba's Table 2",
                  smooth, gptq=False),)
