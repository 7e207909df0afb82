"""Hand-written attention kernels behind ``sparse_ops.attention``'s implementations.

``triton``: Pallas kernels with the Triton lowering (NVIDIA GPUs, Ampere or newer); on CPU only
through ``sparse_ops.kernels.triton.attention(..., interpret=True)``, for tests.
"""
