"""The fast classification head step: gather the candidate rows w[U] once, cosine softmax cross-entropy with its
gradients in closed form, then the momentum-SGD update of exactly the rows U of w and u (the correction).

    loss, grad_z = head_step(z, w, u, U, target, tau, lr, momentum, weight_decay)   # the whole head, in place

or, in the trainer's order (loss -> backward -> update), ``rows = gather(w, U)``, ``loss_and_grads`` (or
``views_loss_and_grads``), the backbone's backward with ``grad_z``, then ``update(w, u, rows, dwn, ...)``.

The plain path is ``loss.pic_loss`` (autograd through ``F.cross_entropy``) followed by ``update.update_rows``;
``head_step_reference`` runs exactly that, and tests and benchmarks compare against it. What changes, and why:

- **Gradients in closed form.** With S = zn wn^T / tau (B, K), P = softmax(S) and G = (P - Y) / B, the mean
  loss has dL/dzn = G wn / tau and dL/dwn = G^T zn / tau; each goes back through the row normalisation as
  dx = (dxn - xn <xn, dxn>) / ||x||. Autograd keeps S, the log-softmax and their gradients alive (four B x K
  tensors); here one B x K buffer holds S, then P (softmax in place), then G. What is left beside the three
  B x K x d matmuls is one softmax pass over (B, K) and a few passes over (K, d).
- **Scratch buffers are reused** (``Workspace``): on a CPU a fresh 64 MiB tensor costs more in page faults
  than the softmax that fills it; on a GPU reuse keeps the allocator out of the step.
- **One gather** of w[U] serves the loss and the update (the plain path gathers it twice); the update reads
  u[U] once and writes w[U] and u[U] once. The normalisation backward of w is done inside the update, so the
  gradient to w[U] is never a separate pass. Without the correction, the dense step over all N rows adds the K
  gradient rows with ``index_add_`` instead of building an (N, d) gradient.
- **Storage** of w and u may be bfloat16: arithmetic is float32 and each element is rounded once when stored.
- **CUDA** (``triton=None`` picks it when w is on a GPU and Triton imports): two Triton kernels fuse
  (1) the gather + normalisation of w[U] and (2) the normalisation backward + momentum update + scatter of
  w[U] and u[U], so the head is the three matmuls, the softmax and two memory-bound kernels. Both run on a
  CPU under Triton's interpreter (TRITON_INTERPRET=1), which is how tests check them without a GPU.

With the recent-instance ring (``negatives.RecentNegatives``, K slots) and the correction, no step touches all
N rows. Conventions follow ``loss.py`` and ``update.py``: U is sorted and distinct, ``target[i]`` is the
position of y_i in U, and normalisation is ``F.normalize``'s x / max(||x||, eps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EPS = 1e-12  # F.normalize's eps: x / max(||x||, eps)
TINY_P = 1e-30  # below this the positive's probability has lost precision: that row's loss is recomputed


class Workspace:
    """Scratch buffers reused across steps, one per (name, dtype, device); they grow and never shrink.

    A view returned by ``get`` stays valid until the next ``get`` of the same name. The head takes each name
    once per step, so a step's gathered rows and gradient live until the next step's ``gather``.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        key = (name, dtype, torch.device(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            # While the ring fills, |U| grows every step: grow geometrically so that is a few allocations.
            size = n if buf is None else max(n, min(2 * buf.numel(), 2 * n))
            buf = self._bufs[key] = torch.empty(size, dtype=dtype, device=device)
        return buf[:n].view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())


@dataclass
class Rows:
    """The candidate rows of one step, gathered once for the loss and the update.

    Attributes:
        U: (K,) int64 sorted distinct row indices (K = N: all rows, in order).
        wn: (K, d) float32 rows as the logits see them: normalised (cosine) or w[U] itself (plain).
        w_U: (K, d) float32 copy of w[U] before the step, for the update; None when a fused kernel
            reads w[U] from storage instead; ``w`` itself for the full softmax with float32 storage.
        w_rn: (K, 1) 1 / max(||w_j||, eps) (cosine; None for plain).
        w_big: (K, 1) 1.0 where ||w_j|| > eps, else 0.0 (F.normalize's gradient skips the projection there).
    """

    U: torch.Tensor
    wn: torch.Tensor
    w_U: torch.Tensor | None
    w_rn: torch.Tensor | None = None
    w_big: torch.Tensor | None = None


def _ws(ws: Workspace | None) -> Workspace:
    return ws if ws is not None else Workspace()


def _use_triton(w: torch.Tensor, triton: bool | None) -> bool:
    if triton is None:
        if not w.is_cuda:
            return False
        try:
            import triton as _  # noqa: F401
        except ImportError:
            return False
        return True
    return triton


def gather(w: torch.Tensor, U: torch.Tensor, cosine: bool = True, ws: Workspace | None = None,
           triton: bool | None = None) -> Rows:
    """Gathers (and for the cosine softmax normalises) the candidate rows w[U].

    Args:
        w: (N, d) classifier weights, float32 or bfloat16 storage.
        U: (K,) int64 sorted distinct rows (K = N: all rows).
        cosine: normalise the rows (cosine softmax) or keep them (plain dot-product softmax).
        ws: scratch buffers to reuse (None: fresh ones).
        triton: fused gather + normalise kernel (None: when w is on a GPU and Triton is installed).
    Returns:
        ``Rows``; its tensors are workspace buffers valid until the next ``gather`` with the same ``ws``.
    """
    ws = _ws(ws)
    N, d = w.shape
    K = U.numel()
    dev = w.device
    if cosine and K < N and _use_triton(w, triton):
        from . import head_triton

        wn = ws.get("wn", (K, d), torch.float32, dev)
        w_rn = ws.get("w_rn", (K, 1), torch.float32, dev)
        w_big = ws.get("w_big", (K, 1), torch.float32, dev)
        head_triton.gather_normalize(w, U, wn, w_rn, w_big, EPS)
        return Rows(U, wn, None, w_rn, w_big)
    if K == N and w.dtype == torch.float32:
        w_U = w  # the full softmax reads w in place: no (N, d) copy
    elif K == N:
        w_U = ws.get("w_U", (K, d), torch.float32, dev).copy_(w)
    elif w.dtype == torch.float32:
        w_U = torch.index_select(w, 0, U, out=ws.get("w_U", (K, d), torch.float32, dev))  # (K, d)
    else:
        raw = torch.index_select(w, 0, U, out=ws.get("w_U_raw", (K, d), w.dtype, dev))
        w_U = ws.get("w_U", (K, d), torch.float32, dev).copy_(raw)  # (K, d)
    if not cosine:
        return Rows(U, w_U, w_U)
    w_norm = torch.linalg.vector_norm(w_U, dim=1, keepdim=True, out=ws.get("w_norm", (K, 1), torch.float32, dev))
    w_big = torch.gt(w_norm, EPS, out=ws.get("w_big", (K, 1), torch.float32, dev))  # (K, 1)
    w_rn = torch.reciprocal(w_norm.clamp_min_(EPS), out=ws.get("w_rn", (K, 1), torch.float32, dev))  # (K, 1)
    wn = torch.mul(w_U, w_rn, out=ws.get("wn", (K, d), torch.float32, dev))  # (K, d)
    return Rows(U, wn, w_U, w_rn, w_big)


def loss_and_grads(z: torch.Tensor, rows: Rows, target: torch.Tensor, tau: float, cosine: bool = True,
                   ws: Workspace | None = None, w_grad: bool = True, scale: float = 1.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The PIC loss and its gradients in closed form (no autograd graph); the loss of ``loss.pic_loss``.

    Args:
        z: (B, d) features (any float dtype, computed in float32; a graph on z is not used).
        rows: the candidate rows from ``gather`` (same ``cosine``).
        target: (B,) int64 position of each y_i in U.
        tau: temperature (cosine only).
        cosine: cosine softmax (normalised rows, / tau) or plain dot-product logits.
        ws: scratch buffers to reuse (None: fresh ones).
        w_grad: also return the gradient to the rows (False for views that must not train w).
        scale: gradients are those of ``scale * loss``.
    Returns:
        loss: () float32, the mean loss (not scaled).
        grad_z: (B, d) float32, a new tensor: d(scale * loss)/dz.
        dwn: (K, d) float32 d(scale * loss)/d rows.wn (a workspace buffer, valid until the next call), or
            None. For the cosine softmax this is before the normalisation backward, which ``update`` applies
            (``w_gradient`` gives the gradient to w[U] itself).
    """
    ws = _ws(ws)
    z = z.detach().float()
    wn = rows.wn
    B, d = z.shape
    K = wn.shape[0]
    dev = z.device
    if cosine:
        z_norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)  # (B, 1)
        z_rn = 1.0 / z_norm.clamp_min(EPS)  # (B, 1)
        zn = z * z_rn  # (B, d)
        zt = zn * (1.0 / tau)  # (B, d): 1/tau folded into the small operand
    else:
        zt = z
    S = torch.mm(zt, wn.t(), out=ws.get("S", (B, K), torch.float32, dev))  # (B, K) logits
    t = target.view(B, 1)
    s_t = S.gather(1, t)  # (B, 1) the positive's logit, kept before S becomes P
    # Cosine logits lie in [-1/tau, 1/tau], so p_t >= exp(-2/tau) / K: when that cannot underflow, no check.
    # Otherwise (plain logits) the exact logsumexp of every row is read before S becomes P (one pass over S, no
    # second matmul) and taken where the positive's probability underflowed: a select, not a branch on the
    # device's answer (``bool(bad.any())`` waited for the device every step).
    bounded = cosine and 2.0 / tau + math.log(K) < -math.log(TINY_P)
    lse = None if bounded else torch.logsumexp(S, dim=1, keepdim=True)  # (B, 1)
    P = torch.ops.aten._softmax.out(S, 1, False, out=S)  # (B, K), in place
    p_t = P.gather(1, t)  # (B, 1)
    losses = -torch.log(p_t)  # (B, 1) = logsumexp_j S_ij - S_i,t_i
    if lse is not None:  # the positive's probability underflowed: exact lse from the logits
        losses = torch.where(p_t < TINY_P, lse - s_t, losses)
    loss = losses.mean()
    P.scatter_add_(1, t, torch.full((B, 1), -1.0, device=dev))  # (B, K) B * G = P - Y
    c = scale / B
    dzn = torch.mm(P, wn).mul_(c / tau if cosine else c)  # (B, d) dL/dzn (cosine) or dL/dz (plain)
    grad_z = _normalize_backward(dzn, zn, z_rn, (z_norm > EPS).float()) if cosine else dzn
    dwn = None
    if w_grad:
        dwn = torch.mm(P.t(), zt * c, out=ws.get("dwn", (K, d), torch.float32, dev))  # (K, d)
    return loss, grad_z, dwn


def _normalize_backward(dxn: torch.Tensor, xn: torch.Tensor, rn: torch.Tensor, big: torch.Tensor,
                        tmp: torch.Tensor | None = None) -> torch.Tensor:
    """In place on dxn: dx = (dxn - xn <xn, dxn> big) * rn, F.normalize's backward.

    Args: dxn, xn: (R, d); rn: (R, 1) = 1 / max(||x||, eps); big: (R, 1) 1.0 where ||x|| > eps.
    """
    prod = torch.mul(xn, dxn, out=tmp) if tmp is not None else xn * dxn  # (R, d)
    dot = prod.sum(1, keepdim=True).mul_(big)  # (R, 1)
    return dxn.addcmul_(xn, dot, value=-1).mul_(rn)


def w_gradient(rows: Rows, dwn: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """The gradient to w[U] (K, d) from ``loss_and_grads``'s dwn (a copy unless ``inplace``); ``update`` does
    this itself, so only tests and benchmarks of the loss alone need it."""
    g = dwn if inplace else dwn.clone()
    if rows.w_rn is None:
        return g
    return _normalize_backward(g, rows.wn, rows.w_rn, rows.w_big)


@torch.no_grad()
def update(w: torch.Tensor, u: torch.Tensor, rows: Rows, dwn: torch.Tensor, lr: float, momentum: float,
           weight_decay: float, correction: bool = True, ws: Workspace | None = None,
           triton: bool | None = None) -> None:
    """Momentum SGD with weight decay on w and u in place, from the rows and gradient of this step.

    Same result as ``update.update_rows(w, u, U, g_U, ...)`` with g_U = ``w_gradient(rows, dwn)``:
    g += wd * w; u = mu * u + g; w -= lr * u, on the rows U only (correction) or on all N rows with zero
    gradient outside U (no correction).

    Args:
        w, u: (N, d) classifier weights and momentum (float32 or bfloat16 storage), updated in place.
        rows: this step's ``gather`` (taken before any change to w); its buffers are overwritten.
        dwn: (K, d) gradient from ``loss_and_grads`` (overwritten with the gradient to w[U]).
        lr, momentum, weight_decay: SGD hyper-parameters for this step.
        correction: update only the rows U (the paper's correction) or all N rows.
        ws: scratch buffers to reuse; triton: fused kernel (None: when w is on a GPU and Triton imports).
    """
    ws = _ws(ws)
    N, d = w.shape
    U = rows.U
    K = U.numel()
    if correction and K < N and (rows.w_U is None or _use_triton(w, triton)):
        from . import head_triton

        head_triton.update_rows(w, u, U, dwn, rows.wn, rows.w_rn, rows.w_big, lr, momentum, weight_decay)
        return
    # The dot products' scratch is the buffer that u[U] is gathered into next (one (K, d) buffer less).
    g_U = dwn if rows.w_rn is None else _normalize_backward(
        dwn, rows.wn, rows.w_rn, rows.w_big, tmp=ws.get("u_U", (K, d), torch.float32, w.device))  # (K, d)
    if K == N or not correction:
        _dense_step(w, u, U, g_U, lr, momentum, weight_decay, ws, rows.w_U if K == N else None)
        return
    w_U = rows.w_U
    u_U = ws.get("u_U", (K, d), torch.float32, w.device)
    if u.dtype == torch.float32:
        torch.index_select(u, 0, U, out=u_U)
    else:
        u_U.copy_(torch.index_select(u, 0, U, out=ws.get("u_U_raw", (K, d), u.dtype, u.device)))
    torch.add(g_U, u_U, alpha=momentum, out=u_U).add_(w_U, alpha=weight_decay)  # u = mu u + (g + wd w)
    w_U.sub_(u_U, alpha=lr)
    if w.dtype == torch.float32:
        w.index_copy_(0, U, w_U)
    else:
        w.index_copy_(0, U, ws.get("w_U_raw", (K, d), w.dtype, w.device).copy_(w_U))
    if u.dtype == torch.float32:
        u.index_copy_(0, U, u_U)
    else:
        u.index_copy_(0, U, ws.get("u_U_raw", (K, d), u.dtype, u.device).copy_(u_U))


DENSE_CHUNK_ROWS = 1 << 16  # rows per float32 chunk of the dense step with bfloat16 storage (bounds extra memory)


def _dense_step(w, u, U, g_U, lr, momentum, weight_decay, ws: Workspace, w_full: torch.Tensor | None) -> None:
    """u = mu u + g + wd w; w -= lr u over all N rows, g = g_U on the rows U and zero elsewhere.

    ``w_full`` is the float32 copy of all of w gathered by a full softmax step (or w itself), reused if given.
    """
    N, d = w.shape
    full = U.numel() == N
    if w.dtype == torch.float32 and u.dtype == torch.float32:
        u.mul_(momentum).add_(w, alpha=weight_decay)
        if full:
            u.add_(g_U)
        else:
            u.index_add_(0, U, g_U)
        w.sub_(u, alpha=lr)
        return
    # Low-precision storage: float32 arithmetic on chunks of rows, one rounding per stored element.
    C = min(N, DENSE_CHUNK_ROWS)
    w32 = ws.get("dense_w", (C, d), torch.float32, w.device)
    u32 = ws.get("dense_u", (C, d), torch.float32, w.device)
    starts = list(range(0, N, C)) + [N]
    bounds = starts if full else torch.searchsorted(U, torch.tensor(starts, device=U.device)).tolist()
    for c in range(len(starts) - 1):
        a, b = starts[c], starts[c + 1]
        wc, uc = w32[: b - a], u32[: b - a]
        wc.copy_(w_full[a:b] if w_full is not None else w[a:b])
        uc.copy_(u[a:b]).mul_(momentum).add_(wc, alpha=weight_decay)
        lo, hi = bounds[c], bounds[c + 1]  # the rows of U inside [a, b) (U is sorted)
        if full:
            uc.add_(g_U[a:b])
        elif hi > lo:
            uc.index_add_(0, U[lo:hi] - a, g_U[lo:hi])
        wc.sub_(uc, alpha=lr)
        w[a:b].copy_(wc)
        u[a:b].copy_(uc)


def views_loss_and_grads(zs: list[torch.Tensor], n_train: int, rows: Rows, target: torch.Tensor, tau: float,
                         cosine: bool = True, ws: Workspace | None = None
                         ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """The trainer's loss over several views: the mean of the per-view losses, where only the first
    ``n_train`` views train w (multi-crop small views see w as a constant, as in ``train.Trainer``).

    Args:
        zs: list of (B, d) features, the n_train large views first; rows: from ``gather``; target: (B,).
    Returns:
        loss: () the mean over all views; grads: the gradient to each z in zs; dwn: (K, d) as in
        ``loss_and_grads``.
    """
    V = len(zs)
    B = target.numel()
    # The large views as one (n_train * B, d) batch: its mean loss is the mean over those views.
    loss, gz, dwn = loss_and_grads(torch.cat([z.detach() for z in zs[:n_train]]), rows, target.repeat(n_train),
                                   tau, cosine, ws, w_grad=True, scale=n_train / V)
    total = loss * (n_train / V)
    grads = list(gz.split(B))
    if V > n_train:
        loss_s, gz_s, _ = loss_and_grads(torch.cat([z.detach() for z in zs[n_train:]]), rows,
                                         target.repeat(V - n_train), tau, cosine, ws, w_grad=False,
                                         scale=(V - n_train) / V)
        total = total + loss_s * ((V - n_train) / V)
        grads += list(gz_s.split(B))
    return total, grads, dwn


def head_step(z: torch.Tensor, w: torch.Tensor, u: torch.Tensor, U: torch.Tensor, target: torch.Tensor,
              tau: float, lr: float, momentum: float, weight_decay: float, correction: bool = True,
              cosine: bool = True, ws: Workspace | None = None, triton: bool | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One whole head step: gather w[U], loss and gradients, update w and u in place.

    Args:
        z: (B, d) features; w, u: (N, d) storage; U: (K,) sorted distinct rows; target: (B,) positions in U.
    Returns:
        loss: () float32; grad_z: (B, d) float32 gradient of the loss to z (for ``z.backward(grad_z)``).
    """
    ws = _ws(ws)
    rows = gather(w, U, cosine, ws, triton)
    loss, grad_z, dwn = loss_and_grads(z, rows, target, tau, cosine, ws)
    update(w, u, rows, dwn, lr, momentum, weight_decay, correction, ws, triton)
    return loss, grad_z


def head_step_reference(z: torch.Tensor, w: torch.Tensor, u: torch.Tensor, U: torch.Tensor, target: torch.Tensor,
                        tau: float, lr: float, momentum: float, weight_decay: float, correction: bool = True,
                        cosine: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain path the trainer runs without ``pic.fast_head``: autograd through ``loss.pic_loss``, then
    ``update.update_rows``. Same arguments and results as ``head_step``."""
    from .loss import pic_loss
    from .update import update_rows

    z = z.detach().float().requires_grad_()
    w_U = (w if U.numel() == w.shape[0] else w.index_select(0, U)).detach().float().requires_grad_()
    loss = pic_loss(z, w_U, target, tau, cosine)
    loss.backward()
    update_rows(w, u, U, w_U.grad, lr, momentum, weight_decay, correction)
    return loss.detach(), z.grad
