"""Small building blocks shared by several mixers: norms, short causal convolution, RoPE, token shift."""
from seqmix.layers.conv import ShortConv
from seqmix.layers.norm import GatedRMSNorm, RMSNorm
from seqmix.layers.rope import apply_rope

__all__ = ["ShortConv", "RMSNorm", "GatedRMSNorm", "apply_rope"]
