"""Hand-written attention kernels behind ``sparse_ops.attention``'s implementations.

``triton``: Pallas kernels with the Triton lowering (NVIDIA GPUs, Ampere or newer); on CPU only
through ``sparse_ops.kernels.triton.attention(..., interpret=True)``, for tests.

``tpu``: Pallas kernels with the Mosaic lowering (TPUs); on CPU only in TPU interpret mode,
``sparse_ops.kernels.tpu.attention(..., interpret=True)`` or inside ``tpu.interpreted()``.

``cudnn``: not a kernel of ours: dense causal or full layouts (known at trace time) through
cuDNN's flash attention, ``jax.nn.dot_product_attention(implementation="cudnn")``; what
``implementation=None`` runs for dense bf16/f16 calls on NVIDIA GPUs.

``common``: what the Pallas kernels share (the custom VJP wrapper, the checks of a direct call, the
partial-block predicate).
"""
