"""Quamba (Chiang et al., ICLR 2025) and the variant of its current release that rotates the residual stream.

`quamba`: static per-tensor scales, the SSM input clipped at the alpha
percentile, a Hadamard rotation before out_proj fused into its weights; int4
weights by GPTQ (Quamba2's W4 recipe). Two details differ from Quamba's code
and are kept on purpose: dt_proj's bias is folded into dt_proj's output
before it is quantized (one scale from the biased range; Quamba quantizes the
bias-free output and adds an int8 dt_bias inside the scan), and weights round
half up as the integer spec does everywhere (Quamba: torch.round, half to even).
`quamba-rot` adds a randomized Hadamard rotation of the residual stream
(embedding, in_proj, out_proj, lm_head, norm weights folded first).
"""

from calib.recipes import Recipe
from calib.recipes.fuse import fold_norms, random_hadamard, rotate_residual

ROTATION_SEED = 0


def rotate_residual_stream(lm, s, windows):
    q = random_hadamard(lm.config.d_model, ROTATION_SEED, f"{lm.name}: residual rotation")
    return rotate_residual(fold_norms(lm), q), [
        (f"norm weights folded; residual stream rotated by a randomized Hadamard (order {lm.config.d_model}, "
        f"seed {ROTATION_SEED})")]


PAPER = "Chiang et al., Quamba, ICLR 2025 (arXiv 2410.13229)"
RECIPES = (
    Recipe("quamba", "percentile-clipped SSM input, online Hadamard before out_proj", PAPER,
           percentile=True, hadamard=True),
    Recipe("quamba-rot", "quamba plus a Hadamard rotation of the residual stream (Quamba's current release)",
           PAPER, rotate_residual_stream, percentile=True, hadamard=True),
)
