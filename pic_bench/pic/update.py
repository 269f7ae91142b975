"""The instance classifier's update: momentum SGD with weight decay on w (N, d) and its momentum u (N, d).

PyTorch's SGD convention, per row j with gradient g_j:  g_j += wd * w_j;  u_j = mu * u_j + g_j;  w_j -= lr * u_j.

- ``correction=True`` (the paper's weight update correction): only the rows U that were in this step's softmax
  have w and u updated; every other row is left exactly as it is.
- ``correction=False``: plain momentum SGD on all N rows. Rows outside U have zero gradient but still move
  through their momentum and weight decay (what a dense optimizer does, and what the official code does).

``update_rows`` is the fast path (index_select / index_copy, in-place, nothing O(N) with correction);
``update_reference`` loops over rows in float64 and is what tests compare against.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def update_rows(w: torch.Tensor, u: torch.Tensor, U: torch.Tensor, g_U: torch.Tensor, lr: float,
                momentum: float, weight_decay: float, correction: bool = True) -> None:
    """Updates w and u in place.

    Args:
        w, u: (N, d) classifier weights and momentum (float32 or bfloat16 storage).
        U: (K,) int64 distinct rows that were in the softmax this step.
        g_U: (K, d) gradient of the loss with respect to w[U].
        lr, momentum, weight_decay: SGD hyper-parameters for this step.
        correction: update only rows U (True) or all N rows (False).
    """
    if U.numel() == w.shape[0]:  # U is sorted and distinct, so it is every row in order: a dense step
        _step_dense(w, u, g_U.to(torch.float32), lr, momentum, weight_decay)
        return
    if correction:
        w_U = w.index_select(0, U).to(torch.float32)  # (K, d)
        u_U = u.index_select(0, U).to(torch.float32)  # (K, d)
        g = g_U.to(torch.float32) + weight_decay * w_U
        u_U.mul_(momentum).add_(g)
        w_U.sub_(lr * u_U)
        w.index_copy_(0, U, w_U.to(w.dtype))
        u.index_copy_(0, U, u_U.to(u.dtype))
    else:
        _step_dense(w, u, _dense(w, U, g_U), lr, momentum, weight_decay)


def _dense(w: torch.Tensor, U: torch.Tensor, g_U: torch.Tensor) -> torch.Tensor:
    g = torch.zeros(w.shape, dtype=torch.float32, device=w.device)  # (N, d)
    g.index_copy_(0, U, g_U.to(torch.float32))
    return g


def _step_dense(w, u, g, lr, momentum, weight_decay) -> None:
    """u = mu * u + (g + wd * w); w -= lr * u, over all rows; g is not modified."""
    if w.dtype == torch.float32 and u.dtype == torch.float32:
        u.mul_(momentum).add_(g).add_(w, alpha=weight_decay)
        w.sub_(u, alpha=lr)
        return
    w32, u32 = w.float(), u.float()
    u32.mul_(momentum).add_(g).add_(w32, alpha=weight_decay)
    w32.sub_(u32, alpha=lr)
    w.copy_(w32)
    u.copy_(u32)


@torch.no_grad()
def update_reference(w: torch.Tensor, u: torch.Tensor, U: torch.Tensor, g_U: torch.Tensor, lr: float,
                     momentum: float, weight_decay: float, correction: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-by-row float64 version; returns new (w, u) and leaves the inputs alone."""
    w2, u2 = w.double().clone(), u.double().clone()
    grads = {int(j): g_U[k].double() for k, j in enumerate(U.tolist())}
    rows = U.tolist() if correction else range(w.shape[0])
    for j in rows:
        g = grads.get(int(j), torch.zeros(w.shape[1], dtype=torch.float64)) + weight_decay * w2[j]
        u2[j] = momentum * u2[j] + g
        w2[j] = w2[j] - lr * u2[j]
    return w2, u2
