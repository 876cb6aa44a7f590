"""Small building blocks shared by several mixers: norms, short causal convolution, RoPE, token shift."""
from seqmix.layers.conv import ShortConv
from seqmix.layers.norm import GatedRMSNorm, RMSNorm
from seqmix.layers.rope import apply_rope
from seqmix.layers.token_shift import token_shift

__all__ = ["ShortConv", "RMSNorm", "GatedRMSNorm", "apply_rope", "token_shift"]
