"""3D nearby attention (3DNA): the mask definition and the implementations the model calls."""
from kernels.attention import BACKENDS, nearby_attention, reference_attention
from kernels.mask import nearby_mask

__all__ = ["BACKENDS", "nearby_attention", "nearby_mask", "reference_attention"]
