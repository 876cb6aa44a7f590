r"""Kolmogorov–Arnold network layers (Liu et al. 2024, "KAN: Kolmogorov-Arnold Networks", §2.2) and ``ffn="kan"``.

Every edge (input i -> output o) carries a learnable activation, a base function plus a B-spline:

    y_o = Σ_i  W_base[o, i] · silu(x_i)  +  Σ_i Σ_j c[o, i, j] · B_j(x_i)

B_j are the G + k B-splines of order k on G intervals of ``grid_range``, with k extra knots on each side
("extended knots": G + 2k + 1 knots per input), so the basis is a partition of unity on the grid range.
Because every activation is a combination of the same fixed basis, the layer is two matmuls:
silu(x) [.., in] @ W_baseᵀ and B(x) [.., in·(G+k)] @ c[out, in·(G+k)]ᵀ.

Out of range: an input outside the extended knots [t_0, t_{G+2k}) has every B_j = 0, so it takes only
the base path. Between t_0 and the grid start (and the grid end and t_{G+2k}) only part of the basis is
alive. ``update_grid`` moves the grid to where the data are (KAN §2.5: per-input knots from sample
quantiles, mixed with a uniform grid) and refits c by least squares, so the layer's function is kept.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.ffn.base import FFN, register_ffn
from seqmix.registry import NON_NEGATIVE, POSITIVE, Annotated


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """Cox–de Boor recursion. x [.., in], grid [in, M] (strictly increasing knots) -> [.., in, M - 1 - order].

    Order 0 is the indicator of [t_j, t_{j+1}); order p mixes neighbours of order p - 1:
    B_{j,p} = (x - t_j)/(t_{j+p} - t_j) · B_{j,p-1} + (t_{j+p+1} - x)/(t_{j+p+1} - t_{j+1}) · B_{j+1,p-1}.
    """
    x = x.unsqueeze(-1)
    B = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (x - grid[:, :-(p + 1)]) / (grid[:, p:-1] - grid[:, :-(p + 1)]) * B[..., :-1]
        right = (grid[:, p + 1:] - x) / (grid[:, p + 1:] - grid[:, 1:-p]) * B[..., 1:]
        B = left + right
    return B


def _check_grid_options(grid_size, spline_order, grid_range, grid_eps) -> tuple[float, float]:
    if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size < 1:
        raise ValueError(f"kan option grid_size={grid_size!r}: must be a positive int (number of grid intervals)")
    if not isinstance(spline_order, int) or isinstance(spline_order, bool) or spline_order < 0:
        raise ValueError(f"kan option spline_order={spline_order!r}: must be an int >= 0 (3 = cubic)")
    if (not isinstance(grid_range, Sequence) or len(grid_range) != 2
            or not all(isinstance(v, (int, float)) for v in grid_range) or not grid_range[0] < grid_range[1]):
        raise ValueError(f"kan option grid_range={grid_range!r}: must be two numbers (low, high) with low < high")
    if not 0 < grid_eps <= 1:
        raise ValueError(f"kan option grid_eps={grid_eps!r}: must lie in (0, 1] (1 = uniform grid on update)")
    return float(grid_range[0]), float(grid_range[1])


class KANLinear(nn.Module):
    """One KAN layer: in_features -> out_features with a base + B-spline activation on every edge.

    Shapes: x [.., in] -> y [.., out]. Parameters: base_weight [out, in], spline_weight c [out, in, G + k];
    buffer ``grid`` [in, G + 2k + 1] (per input, so ``update_grid`` can adapt each one). No bias.
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range: Sequence[float] = (-1.0, 1.0), noise_scale: float = 0.1, grid_eps: float = 0.02):
        super().__init__()
        lo, hi = _check_grid_options(grid_size, spline_order, grid_range, grid_eps)
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order, self.grid_eps = grid_size, spline_order, grid_eps
        h = (hi - lo) / grid_size
        knots = lo + h * torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.get_default_dtype())
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.base_weight, a=5 ** 0.5)  # nn.Linear's default: the base path starts as an MLP layer
        # small splines: at initialisation every activation is close to its base function (KAN §2.2)
        self.spline_weight = nn.Parameter(
            torch.randn(out_features, in_features, grid_size + spline_order) * noise_scale / in_features ** 0.5)

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """B(x): [.., in] -> [.., in, G + k]."""
        return bspline_basis(x, self.grid, self.spline_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(F.silu(x), self.base_weight)
        return base + F.linear(self.basis(x).flatten(-2), self.spline_weight.flatten(1))

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, margin: float = 0.01) -> None:
        """Refit the grid to samples x [.., in], keeping each edge's spline by least squares (KAN §2.5).

        New knots per input: grid_eps · uniform(min - margin, max + margin) + (1 - grid_eps) · quantiles,
        extended by k uniform steps each side; then c is refit so that Σ_j c'_j B'_j(x) matches the old
        Σ_j c_j B_j(x) on the samples.
        """
        x = x.reshape(-1, self.in_features)
        G, k, n = self.grid_size, self.spline_order, x.shape[0]
        target = torch.einsum("nij,oij->ino", self.basis(x), self.spline_weight)  # [in, N, out]
        xs = x.sort(dim=0).values
        quantiles = xs[torch.linspace(0, n - 1, G + 1, device=x.device).round().long()]  # [G + 1, in]
        lo, hi = xs[0] - margin, xs[-1] + margin
        h = (hi - lo) / G
        steps = torch.arange(G + 1, device=x.device, dtype=x.dtype)[:, None]
        inner = self.grid_eps * (lo + h * steps) + (1 - self.grid_eps) * quantiles
        ext = torch.arange(1, k + 1, device=x.device, dtype=x.dtype)[:, None] * h
        self.grid.copy_(torch.cat([inner[:1] - ext.flip(0), inner, inner[-1:] + ext]).T)
        A = self.basis(x).transpose(0, 1)  # [in, N, G + k]
        coef = torch.linalg.lstsq(A, target).solution  # [in, G + k, out]
        self.spline_weight.copy_(coef.permute(2, 0, 1))


class KAN(nn.Module):
    """A stack of KANLinear layers with widths [w_0, w_1, ..., w_n] (no activation in between: the edges are it)."""

    def __init__(self, widths: Sequence[int], **layer_options):
        super().__init__()
        if len(widths) < 2 or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"KAN widths={list(widths)!r}: need at least two positive ints")
        self.layers = nn.ModuleList(KANLinear(a, b, **layer_options) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, margin: float = 0.01) -> None:
        """Update each layer's grid on the activations that reach it (after the earlier layers' updates)."""
        for layer in self.layers:
            layer.update_grid(x, margin)
            x = layer(x)


def swiglu_matched_hidden(d_model: int, grid_size: int, spline_order: int) -> int:
    """The KAN [d, h, d] hidden width whose 2·d·h·(1 + G + k) parameters match SwiGLU's 3·d·h_swiglu."""
    h_swiglu = 8 * ((8 * d_model // 3 + 7) // 8)
    return max(1, round(3 * h_swiglu / (2 * (1 + grid_size + spline_order))))


@register_ffn("kan")
class KANFFN(FFN):
    """ffn="kan": a two-layer KAN [d_model, hidden, d_model] applied to every token. Stateless.

    Options: ``hidden`` (default: the width that matches SwiGLU's parameter count at this d_model),
    ``grid_size`` G, ``spline_order`` k, ``grid_range`` (default (-2, 2): inputs arrive RMS-normalised).
    """

    def __init__(self, d_model: int, *, layer_idx: int = 0, n_layers: int = 1,
                 hidden: Annotated[int, POSITIVE] | None = None, grid_size: Annotated[int, POSITIVE] = 5,
                 spline_order: Annotated[int, NON_NEGATIVE] = 3, grid_range: tuple[float, float] = (-2.0, 2.0)):
        super().__init__(d_model, layer_idx=layer_idx, n_layers=n_layers)
        if not grid_range[0] < grid_range[1]:
            raise ValueError(f"kan option grid_range={grid_range!r}: need low < high")
        if hidden is None:
            hidden = swiglu_matched_hidden(d_model, grid_size, spline_order)
        self.net = KAN([d_model, hidden, d_model], grid_size=grid_size, spline_order=spline_order,
                       grid_range=tuple(grid_range))

    def forward(self, x, state=None):
        return self.net(x), state
