"""Triton kernels of the fast head (``pic_bench.pic.head``), used on CUDA: each replaces a chain of small kernels by
one memory-bound pass over the K candidate rows.

- ``gather_normalize``: wn = w[U] / max(||w[U]||, eps), plus 1 / max(||w[U]||, eps) and the ||w[U]|| > eps mask,
  reading each row of w once (float32 or bfloat16 storage).
- ``update_rows``: the normalisation backward g = (dwn - wn <wn, dwn>) / ||w||, then u = mu u + g + wd w and
  w -= lr u on the rows U, reading w[U], u[U] from storage and writing them back once (the correction).

Imported only when used, so a CPU install never needs Triton. With TRITON_INTERPRET=1 set before this module is
imported, the kernels run on CPU tensors through Triton's interpreter (slow, for tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS = 8  # rows per program: d = 128 floats per row, so a program moves 4 KiB per operand


@triton.jit
def _gather_normalize_kernel(w_ptr, U_ptr, wn_ptr, rn_ptr, big_ptr, K, d, stride_w, eps,
                             BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,) positions in U
    rmask = r < K
    j = tl.load(U_ptr + r, mask=rmask, other=0)  # (ROWS,) rows of w
    c = tl.arange(0, BLOCK_D)
    m = rmask[:, None] & (c[None, :] < d)
    x = tl.load(w_ptr + j[:, None] * stride_w + c[None, :], mask=m, other=0.0).to(tl.float32)  # (ROWS, D)
    norm = tl.sqrt(tl.sum(x * x, axis=1))  # (ROWS,)
    rn = 1.0 / tl.maximum(norm, eps)
    tl.store(wn_ptr + r[:, None] * d + c[None, :], x * rn[:, None], mask=m)
    tl.store(rn_ptr + r, rn, mask=rmask)
    tl.store(big_ptr + r, (norm > eps).to(tl.float32), mask=rmask)


@triton.jit
def _update_rows_kernel(w_ptr, u_ptr, U_ptr, dwn_ptr, wn_ptr, rn_ptr, big_ptr, K, d, stride_w, stride_u,
                        lr, momentum, weight_decay, COSINE: tl.constexpr, BLOCK_D: tl.constexpr,
                        ROWS: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = r < K
    j = tl.load(U_ptr + r, mask=rmask, other=0)
    c = tl.arange(0, BLOCK_D)
    m = rmask[:, None] & (c[None, :] < d)
    g = tl.load(dwn_ptr + r[:, None] * d + c[None, :], mask=m, other=0.0)  # (ROWS, D)
    if COSINE:
        xn = tl.load(wn_ptr + r[:, None] * d + c[None, :], mask=m, other=0.0)
        rn = tl.load(rn_ptr + r, mask=rmask, other=0.0)
        big = tl.load(big_ptr + r, mask=rmask, other=0.0)
        dot = tl.sum(xn * g, axis=1) * big  # (ROWS,)
        g = (g - xn * dot[:, None]) * rn[:, None]
    w_row = w_ptr + j[:, None] * stride_w + c[None, :]
    u_row = u_ptr + j[:, None] * stride_u + c[None, :]
    w = tl.load(w_row, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_row, mask=m, other=0.0).to(tl.float32)
    u = momentum * u + (g + weight_decay * w)
    w = w - lr * u
    tl.store(w_row, w.to(w_ptr.dtype.element_ty), mask=m)
    tl.store(u_row, u.to(u_ptr.dtype.element_ty), mask=m)


def _block_d(d: int) -> int:
    return triton.next_power_of_2(d)


def gather_normalize(w: torch.Tensor, U: torch.Tensor, wn: torch.Tensor, w_rn: torch.Tensor, w_big: torch.Tensor,
                     eps: float) -> None:
    """Fills wn (K, d), w_rn (K, 1), w_big (K, 1) (float32, contiguous) from w (N, d) and U (K,)."""
    K, d = wn.shape
    assert w.stride(1) == 1 and wn.is_contiguous(), "rows must be contiguous"
    grid = (triton.cdiv(K, ROWS),)
    _gather_normalize_kernel[grid](w, U, wn, w_rn, w_big, K, d, w.stride(0), eps, BLOCK_D=_block_d(d), ROWS=ROWS)


def update_rows(w: torch.Tensor, u: torch.Tensor, U: torch.Tensor, dwn: torch.Tensor, wn: torch.Tensor,
                w_rn: torch.Tensor | None, w_big: torch.Tensor | None, lr: float, momentum: float,
                weight_decay: float) -> None:
    """The corrected update of rows U of w and u in place; dwn is the gradient to wn (cosine: w_rn given)
    or to w[U] itself (plain: w_rn None)."""
    K, d = dwn.shape
    assert w.stride(1) == 1 and u.stride(1) == 1 and dwn.is_contiguous(), "rows must be contiguous"
    cosine = w_rn is not None
    grid = (triton.cdiv(K, ROWS),)
    _update_rows_kernel[grid](w, u, U, dwn, wn, w_rn if cosine else dwn, w_big if cosine else dwn, K, d,
                              w.stride(0), u.stride(0), float(lr), float(momentum), float(weight_decay),
                              COSINE=cosine, BLOCK_D=_block_d(d), ROWS=ROWS)
