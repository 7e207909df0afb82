"""sparse_ops: block-sparse attention for JAX.

    import sparse_ops as so
    out = so.attention(q, k, v, mask=so.masks.Local(1024))                 # static mask
    layout = so.BlockLayout.from_mask(so.masks.Causal(), T, T)              # explicit layout
    out = so.attention(q, k, v, layout=layout, implementation="xla")
    so.flops.model_flops(so.masks.Local(1024), T, T, num_heads=H, head_dim=D)
    layout = so.select_blocks(q, k, block_q=64, block_kv=64, budget=so.Budget.density(0.1))

Depends on jax and numpy only.
"""

from sparse_ops import flops, masks
from sparse_ops.attention import (IMPLEMENTATIONS, attention, available_implementations,
                                  best_implementation, default_implementation)
from sparse_ops.layout import BlockLayout
from sparse_ops.selection import (Budget, block_scores, select_block_mask, select_blocks,
                                  selected_pairs)

__all__ = ["attention", "masks", "flops", "BlockLayout", "Budget", "select_blocks",
           "select_block_mask", "block_scores", "selected_pairs", "IMPLEMENTATIONS", "available_implementations",
           "default_implementation", "best_implementation"]
