"""The PIC loss: a cosine (or plain) softmax over instance classifier rows, all N or the K recent ones.

    L = -1/|B| sum_i log( exp(cos(w_{y_i}, z_i) / tau) / sum_{j in negatives} exp(cos(w_j, z_i) / tau) )

The negatives are the rows ``w_U`` gathered by ``negatives.RecentNegatives`` (U = all N without recent
sampling); ``target[i]`` is the position of y_i in U. ``pic_loss`` is the fast path (one matmul and
``F.cross_entropy``); ``pic_loss_reference`` spells the formula out and is what tests compare against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pic_logits(z: torch.Tensor, w_U: torch.Tensor, tau: float, cosine: bool = True) -> torch.Tensor:
    """Logits of every view against every candidate row.

    Args:
        z: (B, d) features.
        w_U: (K, d) classifier rows of the candidate instances (the negatives, positives included).
        tau: temperature (cosine only; the plain softmax is a bare dot product).
        cosine: normalise z and w and divide by tau; else plain dot-product logits.
    Returns:
        (B, K) logits.
    """
    if cosine:
        return F.normalize(z, dim=1) @ F.normalize(w_U, dim=1).t() / tau  # (B, K)
    return z @ w_U.t()  # (B, K)


def pic_loss(z: torch.Tensor, w_U: torch.Tensor, target: torch.Tensor, tau: float, cosine: bool = True
             ) -> torch.Tensor:
    """Mean PIC loss over the batch.

    Args:
        z: (B, d) features; w_U: (K, d) candidate rows; target: (B,) int64 positions of each y_i in U.
    Returns:
        scalar loss.
    """
    return F.cross_entropy(pic_logits(z, w_U, tau, cosine), target)


def pic_loss_reference(z: torch.Tensor, w_U: torch.Tensor, target: torch.Tensor, tau: float,
                       cosine: bool = True) -> torch.Tensor:
    """The formula term by term in float64 (for tests): -mean_i [ s_{i,y_i} - log sum_j exp(s_{i,j}) ]."""
    z64, w64 = z.double(), w_U.double()
    losses = []
    for i in range(z64.shape[0]):
        if cosine:
            s = torch.stack([torch.dot(z64[i], w64[j]) / (z64[i].norm() * w64[j].norm()) / tau
                             for j in range(w64.shape[0])])
        else:
            s = torch.stack([torch.dot(z64[i], w64[j]) for j in range(w64.shape[0])])
        m = s.max()
        losses.append(-(s[target[i]] - (m + torch.log(torch.exp(s - m).sum()))))
    return torch.stack(losses).mean()
