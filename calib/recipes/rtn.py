"""RTN: the floor every recipe must beat.

Static per-tensor absmax scales for every activation, weights rounded to
nearest (int8 per tensor, int4 per group), no rotation, no clipping.
"""

from calib.recipes import Recipe

RECIPES = (Recipe("rtn", "absmax scales, round-to-nearest weights, no rotation, no clipping",
                  "round to nearest: the baseline of every PTQ paper", gptq=False),)
