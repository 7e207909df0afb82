"""sparse_ops: block-sparse attention for JAX.

    import sparse_ops as so
    out = so.attention(q, k, v, mask=so.masks.Local(1024))                 # static mask
    layout = so.BlockLayout.from_mask(so.masks.Causal(), T, T)              # explicit layout
    out = so.attention(q, k, v, layout=layout, implementation="xla")
    so.flops.model_flops(so.masks.Local(1024), T, T, num_heads=H, head_dim=D)

Depends on jax and numpy only.
"""

from sparse_ops import flops, masks
from sparse_ops.attention import (IMPLEMENTATIONS, attention, available_implementations,
                                  default_implementation)
from sparse_ops.layout import BlockLayout

__all__ = ["attention", "masks", "flops", "BlockLayout", "IMPLEMENTATIONS",
           "available_implementations", "default_implementation"]
