"""Small building blocks shared by several mixers: norms, short causal convolution, RoPE, token shift, and the
linear layer with its inference cache."""
from seqmix.layers.conv import ShortConv
from seqmix.layers.inference import Linear, cached, side_by_side
from seqmix.layers.norm import NORMS, GatedRMSNorm, RMSNorm, make_norm
from seqmix.layers.rope import apply_rope
from seqmix.layers.token_shift import token_shift

__all__ = ["Linear", "cached", "side_by_side", "ShortConv", "RMSNorm", "GatedRMSNorm", "NORMS", "make_norm", "apply_rope", "token_shift"]
