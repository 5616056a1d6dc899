"""QuaRot-SSM (Ashkboos et al., QuaRot, NeurIPS 2024, as Quamba's comparison applies it to Mamba).

Norm weights folded into the following linears, the residual stream rotated
by a randomized Hadamard fused into embedding, in_proj, out_proj and lm_head,
and the online Hadamard before out_proj; absmax scales, no clipping.
"""

from calib.recipes import Recipe
from calib.recipes.quamba import rotate_residual_stream

RECIPES = (Recipe("quarot", "Hadamard-rotated residual stream and online Hadamard before out_proj, absmax scales",
                  "Ashkboos et al., QuaRot, NeurIPS 2024 (arXiv 2404.00456); QuaRot-SSM as in Quamba's Table 2",
                  rotate_residual_stream, hadamard=True),)
