"""Φ, the auxiliary low-rank module that absorbs quantization error during QAT.

Φ = L · diag(γ) · R with L [N, r] and R [r, K]: the layer computes
y = Q_a(x) · (Q_w(W) + Φ)^T + b, i.e. Φ adds L·diag(γ)·R·x̂ for the quantized input x̂. The
layer forms Q_w(W) + Φ (``delta_weight``) and multiplies once: Φ then costs 2·r·N·K flops per
call whatever the number of tokens, and no second pass over the activations.

Initialisation (``from_error``): the truncated SVD of the initial quantization error
E = W − Q_w(W) = U S Vᵀ, split evenly as L = U_r √S_r and R = √S_r V_rᵀ, so Φ starts as the
best rank-r approximation of E (Eckart–Young) and ‖E − L·R‖_F ≤ ‖E‖_F.

Rank decay (``truncated``): keep the first ``keep`` components and re-decompose their product
P = L_k · diag(γ_k) · R_k by SVD, so that the components of the next phase are again ordered by
singular value and the smallest are the ones that decay next. P is never formed: with
L_k = Q_L T_L and R_kᵀ = Q_R T_R (thin QR), P = Q_L (T_L diag(γ_k) T_Rᵀ) Q_Rᵀ and only the
keep × keep core is decomposed.

γ is not a parameter: the rank-decay schedule sets it on every step (a pure function of the
step), so it is a non-persistent buffer.
"""

from __future__ import annotations

import torch
from torch import nn


def _split_svd(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    root = s.clamp(min=0).sqrt()
    return u * root, root[:, None] * vh


class LowRankBranch(nn.Module):
    """Φ of one layer. Parameters ``L`` [N, r], ``R`` [r, K] float32; buffer ``gamma`` [r]."""

    gamma: torch.Tensor

    def __init__(self, left: torch.Tensor, right: torch.Tensor) -> None:
        super().__init__()
        if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
            raise ValueError(
                f"Φ factors must be [N, r] and [r, K], got {tuple(left.shape)} and {tuple(right.shape)}"
            )
        if left.shape[1] < 1:
            raise ValueError("Φ needs rank ≥ 1; a layer without Φ has phi = None")
        self.L = nn.Parameter(left.detach().float().clone())
        self.R = nn.Parameter(right.detach().float().clone())
        self.register_buffer(
            "gamma", torch.ones(left.shape[1], device=left.device), persistent=False
        )

    @property
    def rank(self) -> int:
        return int(self.L.shape[1])

    @classmethod
    def from_error(cls, error: torch.Tensor, rank: int) -> LowRankBranch:
        """Best rank-``rank`` approximation of ``error`` [N, K] (truncated SVD)."""
        if not 1 <= rank <= min(error.shape):
            raise ValueError(f"Φ rank must lie in [1, {min(error.shape)}], got {rank}")
        u, s, vh = torch.linalg.svd(error.detach().float(), full_matrices=False)
        left, right = _split_svd(u[:, :rank], s[:rank], vh[:rank])
        return cls(left, right)

    def set_gamma(self, gamma: torch.Tensor) -> None:
        if gamma.shape != self.gamma.shape:
            raise ValueError(
                f"γ must have shape {tuple(self.gamma.shape)}, got {tuple(gamma.shape)}"
            )
        self.gamma.copy_(gamma)

    def delta_weight(self) -> torch.Tensor:
        """L · diag(γ) · R, float32 [N, K] (also under autocast: the layer adds it to Q_w(W)
        in float32 and rounds the sum once)."""
        with torch.autocast(self.L.device.type, enabled=False):
            return (self.L * self.gamma) @ self.R

    @torch.no_grad()
    def truncated(self, keep: int) -> LowRankBranch | None:
        """A new Φ holding the SVD of the first ``keep`` components' product; None if keep = 0."""
        if not 0 <= keep <= self.rank:
            raise ValueError(f"cannot keep {keep} of {self.rank} Φ components")
        if keep == 0:
            return None
        q_l, t_l = torch.linalg.qr(self.L[:, :keep] * self.gamma[:keep])
        q_r, t_r = torch.linalg.qr(self.R[:keep].t())
        u, s, vh = torch.linalg.svd(t_l @ t_r.t())
        left, right = _split_svd(q_l @ u, s, vh @ q_r.t())
        return LowRankBranch(left, right)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, out={self.L.shape[0]}, in={self.R.shape[1]}"
