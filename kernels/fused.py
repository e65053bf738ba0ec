"""The fused 3DNA path: a Triton kernel in which every query reads only the keys of its own window.

Dense-tile kernels (FlashAttention, FlexAttention's blocks, `blocked`'s boxes) pair a block of queries
with a block of keys and pay for every pair in it; at the paper's video window (at most 27 keys, 12.3
on average with causality and <bos>) that is 12-50× the visible pairs. Here a program takes a block of
queries in 3D-tiled order (kernels/neighbours.py) and walks their window slots: slot j loads the j-th
key of each query's window, scores it against that query alone, and folds it into an online softmax.
The work is the window's slots (14 per query at 10×21×21, 1.14× the visible pairs); the price is that
scores are row-wise dot products on the vector units instead of tensor-core matrix products, which a
window this small cannot fill anyway.

Backward recomputes the probabilities from the saved log-sum-exp: dQ walks the same slots; dK and dV
walk, for each key, the queries that read it (the inverse table), so no two programs write one row and
no atomics are needed. The global keys (<bos>) are in the kernel's forward; their gradients, a [Nq, G]
matrix, are computed in plain PyTorch.

Triton compiles the kernels for CUDA; with TRITON_INTERPRET=1 (set by the tests on a machine without a
GPU) its interpreter runs them on CPU tensors, slowly, which is how CI checks them against the reference.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from kernels.mask import NO_WRAP, Extent, Grid
from kernels.neighbours import TILE, build_window_plan

BLOCK = math.prod(TILE)
"""Queries (keys, backward) per program: one TILE box of kernels/neighbours.py, 64 tokens."""
LOG2_E = 1.4426950408889634
MASKED = tl.constexpr(-1.0e30)  # a score no visible key reaches; finite, so that a running maximum is never -inf


@triton.jit
def _program_rows(ORDER, n, n_heads, BLOCK: tl.constexpr):
    """This program's batch·head, batch and head, and its BLOCK token ids of ORDER (with which are in range)."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = rows < n
    token = tl.load(ORDER + rows, mask=in_range, other=0).to(tl.int64)
    return bh, bh // n_heads, bh % n_heads, token, in_range


@triton.jit
def _gather(T, b, h, s_b, s_h, s_n, token, valid, D: tl.constexpr, D_PAD: tl.constexpr):
    """Rows `token` of head (b, h) of a [B, heads, N, D] tensor, as fp32 [len(token), D_PAD]; zeros where not valid."""
    d = tl.arange(0, D_PAD)
    return tl.load(T + b * s_b + h * s_h + token[:, None] * s_n + d[None, :], mask=valid[:, None] & (d < D)[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _scatter(T, b, h, s_b, s_h, s_n, token, valid, rows, D: tl.constexpr, D_PAD: tl.constexpr):
    d = tl.arange(0, D_PAD)
    tl.store(T + b * s_b + h * s_h + token[:, None] * s_n + d[None, :], rows.to(T.dtype.element_ty),
             mask=valid[:, None] & (d < D)[None, :])


@triton.jit
def _slot(TABLE, WIDTH: tl.constexpr, token, in_range, slot, KEY_MASK, b, n_k, IS_KEY: tl.constexpr,
          HAS_KEY_MASK: tl.constexpr):
    """Entry `slot` of each token's row of TABLE (-1: none), and whether it is a pair to compute: an entry, and
    not a caption's padding key (KEY_MASK, when the entries are keys)."""
    other = tl.load(TABLE + token * WIDTH + slot, mask=in_range, other=-1).to(tl.int64)
    ok = other >= 0
    if HAS_KEY_MASK and IS_KEY:
        ok = ok & (tl.load(KEY_MASK + b * n_k + other, mask=ok, other=0) != 0)
    return other, ok


@triton.jit
def _window_forward(Q, K, V, KG, VG, O, LSE, Q_ORDER, KEYS, KEY_MASK,
                    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sg_b, sg_h, sg_n, so_b, so_h, so_n,
                    n_heads, n_q, n_k, scale,
                    SLOTS: tl.constexpr, N_GLOBAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, D: tl.constexpr,
                    D_PAD: tl.constexpr, BLOCK_Q: tl.constexpr):
    bh, b, h, query, in_range = _program_rows(Q_ORDER, n_q, n_heads, BLOCK_Q)
    q = _gather(Q, b, h, sq_b, sq_h, sq_n, query, in_range, D, D_PAD) * scale  # scores in log2 units
    m = tl.full([BLOCK_Q], MASKED, tl.float32)
    l = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, D_PAD], tl.float32)
    for g in range(N_GLOBAL):  # every query sees the global keys
        first = tl.zeros([BLOCK_Q], tl.int64) + g
        k, v = (_gather(KG, b, h, sg_b, sg_h, sg_n, first, in_range, D, D_PAD),
                _gather(VG, b, h, sg_b, sg_h, sg_n, first, in_range, D, D_PAD))
        s = tl.sum(q * k, 1)
        m_new = tl.maximum(m, s)
        alpha, p = tl.exp2(m - m_new), tl.exp2(s - m_new)
        l = l * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * v
        m = m_new
    for slot in range(SLOTS):  # online softmax over each query's window, one key a slot
        key, ok = _slot(KEYS, SLOTS, query, in_range, slot, KEY_MASK, b, n_k, True, HAS_KEY_MASK)
        k, v = (_gather(K, b, h, sk_b, sk_h, sk_n, key, ok, D, D_PAD),
                _gather(V, b, h, sv_b, sv_h, sv_n, key, ok, D, D_PAD))
        s = tl.where(ok, tl.sum(q * k, 1), MASKED)
        m_new = tl.maximum(m, s)
        alpha, p = tl.exp2(m - m_new), tl.where(ok, tl.exp2(s - m_new), 0.0)
        l = l * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * v
        m = m_new
    l = tl.where(l > 0, l, 1.0)  # only rows past the end have no key
    _scatter(O, b, h, so_b, so_h, so_n, query, in_range, acc / l[:, None], D, D_PAD)
    tl.store(LSE + bh * n_q + query, m + tl.log2(l), mask=in_range)


@triton.jit
def _window_backward_query(Q, K, V, DO, DQ, LSE, DELTA, Q_ORDER, KEYS, KEY_MASK,
                           sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_n,
                           sdq_b, sdq_h, sdq_n, n_heads, n_q, n_k, scale, sm_scale,
                           SLOTS: tl.constexpr, HAS_KEY_MASK: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                           BLOCK_Q: tl.constexpr):
    """dQ (fp32) from the window keys; the globals' share is added outside."""
    bh, b, h, query, in_range = _program_rows(Q_ORDER, n_q, n_heads, BLOCK_Q)
    q = _gather(Q, b, h, sq_b, sq_h, sq_n, query, in_range, D, D_PAD)
    do = _gather(DO, b, h, sdo_b, sdo_h, sdo_n, query, in_range, D, D_PAD)
    lse = tl.load(LSE + bh * n_q + query, mask=in_range, other=0.0)
    delta = tl.load(DELTA + bh * n_q + query, mask=in_range, other=0.0)
    dq = tl.zeros([BLOCK_Q, D_PAD], tl.float32)
    for slot in range(SLOTS):
        key, ok = _slot(KEYS, SLOTS, query, in_range, slot, KEY_MASK, b, n_k, True, HAS_KEY_MASK)
        k, v = (_gather(K, b, h, sk_b, sk_h, sk_n, key, ok, D, D_PAD),
                _gather(V, b, h, sv_b, sv_h, sv_n, key, ok, D, D_PAD))
        p = tl.where(ok, tl.exp2(tl.sum(q * k, 1) * scale - lse), 0.0)
        ds = p * (tl.sum(do * v, 1) - delta)
        dq += ds[:, None] * k
    _scatter(DQ, b, h, sdq_b, sdq_h, sdq_n, query, in_range, dq * sm_scale, D, D_PAD)


@triton.jit
def _window_backward_key(Q, K, V, DO, DK, DV, LSE, DELTA, K_ORDER, READERS, KEY_MASK,
                         sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_n,
                         sdk_b, sdk_h, sdk_n, sdv_b, sdv_h, sdv_n, n_heads, n_q, n_k, scale, sm_scale,
                         N_READERS: tl.constexpr, HAS_KEY_MASK: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """dK and dV of the grid keys, each from the queries that read it (zero for a padding key)."""
    bh, b, h, key, in_range = _program_rows(K_ORDER, n_k, n_heads, BLOCK_K)
    is_key = in_range
    if HAS_KEY_MASK:
        is_key = is_key & (tl.load(KEY_MASK + b * n_k + key, mask=in_range, other=0) != 0)
    k = _gather(K, b, h, sk_b, sk_h, sk_n, key, in_range, D, D_PAD)
    v = _gather(V, b, h, sv_b, sv_h, sv_n, key, in_range, D, D_PAD)
    dk = tl.zeros([BLOCK_K, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_K, D_PAD], tl.float32)
    for slot in range(N_READERS):
        query, ok = _slot(READERS, N_READERS, key, is_key, slot, KEY_MASK, b, n_k, False, HAS_KEY_MASK)
        q = _gather(Q, b, h, sq_b, sq_h, sq_n, query, ok, D, D_PAD)
        do = _gather(DO, b, h, sdo_b, sdo_h, sdo_n, query, ok, D, D_PAD)
        lse = tl.load(LSE + bh * n_q + query, mask=ok, other=0.0)
        delta = tl.load(DELTA + bh * n_q + query, mask=ok, other=0.0)
        p = tl.where(ok, tl.exp2(tl.sum(q * k, 1) * scale - lse), 0.0)
        dv += p[:, None] * do
        ds = p * (tl.sum(do * v, 1) - delta)
        dk += ds[:, None] * q
    _scatter(DK, b, h, sdk_b, sdk_h, sdk_n, key, in_range, dk * sm_scale, D, D_PAD)
    _scatter(DV, b, h, sdv_b, sdv_h, sdv_n, key, in_range, dv, D, D_PAD)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _rows_last(t: torch.Tensor) -> torch.Tensor:
    """The kernels read head dimensions contiguously; a view whose last stride is not 1 is copied."""
    return t if t.stride(-1) == 1 else t.contiguous()


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, k_global, v_global, key_mask, plan):
        B, H, n_q, D = q.shape
        n_k = k.shape[2]
        n_global = 0 if k_global is None else k_global.shape[2]
        mask = plan.keys if key_mask is None else key_mask  # unread without a key_mask
        kg, vg = (k_global, v_global) if n_global else (k, v)  # unread when there are no globals
        out = q.new_empty(B, n_q, H, D).transpose(1, 2)  # the model's [B, N, h·D] after a free reshape
        lse = torch.empty(B * H, n_q, device=q.device, dtype=torch.float32)
        sm_scale = 1.0 / math.sqrt(D)
        _window_forward[(triton.cdiv(n_q, BLOCK), B * H)](
            q, k, v, kg, vg, out, lse, plan.q_order, plan.keys, mask,
            *_strides(q), *_strides(k), *_strides(v), *_strides(kg), *_strides(out),
            H, n_q, n_k, sm_scale * LOG2_E,
            SLOTS=plan.slots, N_GLOBAL=n_global, HAS_KEY_MASK=key_mask is not None, D=D,
            D_PAD=triton.next_power_of_2(D), BLOCK_Q=BLOCK)
        ctx.save_for_backward(q, k, v, k_global, v_global, key_mask, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, k_global, v_global, key_mask, out, lse = ctx.saved_tensors
        plan = ctx.plan
        mask = plan.keys if key_mask is None else key_mask
        B, H, n_q, D = q.shape
        n_k = k.shape[2]
        grad_out = _rows_last(grad_out)
        sm_scale = 1.0 / math.sqrt(D)
        delta = (grad_out.float() * out.float()).sum(-1).reshape(B * H, n_q).contiguous()
        dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
        meta = dict(HAS_KEY_MASK=key_mask is not None, D=D, D_PAD=triton.next_power_of_2(D))
        _window_backward_query[(triton.cdiv(n_q, BLOCK), B * H)](
            q, k, v, grad_out, dq, lse, delta, plan.q_order, plan.keys, mask, *strides, *_strides(dq),
            H, n_q, n_k, sm_scale * LOG2_E, sm_scale, SLOTS=plan.slots, BLOCK_Q=BLOCK, **meta)
        _window_backward_key[(triton.cdiv(n_k, BLOCK), B * H)](
            q, k, v, grad_out, dk, dv, lse, delta, plan.k_order, plan.readers, mask, *strides, *_strides(dk),
            *_strides(dv),
            H, n_q, n_k, sm_scale * LOG2_E, sm_scale, N_READERS=plan.readers.shape[1], BLOCK_K=BLOCK, **meta)
        dk_global = dv_global = None
        if k_global is not None:  # [Nq, G] probabilities: small enough for plain PyTorch
            qf, dof = q.float(), grad_out.float()
            p = torch.exp2(qf @ k_global.float().transpose(2, 3) * (sm_scale * LOG2_E) - lse.view(B, H, n_q, 1))
            ds = p * (dof @ v_global.float().transpose(2, 3) - delta.view(B, H, n_q, 1))
            dq += sm_scale * ds @ k_global.float()
            dk_global = (sm_scale * ds.transpose(2, 3) @ qf).to(k_global.dtype)
            dv_global = (p.transpose(2, 3) @ dof).to(v_global.dtype)
        return dq.to(q.dtype), dk, dv, dk_global, dv_global, None, None


@torch.compiler.disable  # a Triton call and a cached plan: compiled graphs break around it
def fused_nearby_attention(q, k, v, q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool,
                           k_global=None, v_global=None, key_mask=None, wrap=NO_WRAP) -> torch.Tensor:
    """Same contract as `nearby_attention`; CUDA, or CPU under TRITON_INTERPRET=1."""
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend 'fused' is a Triton kernel: it needs a CUDA device (on CPU, only Triton's slow "
                         "interpreter runs it, with TRITON_INTERPRET=1 set before kernels.fused is imported); "
                         "use backend='blocked'")
    plan = build_window_plan(tuple(q_grid), tuple(kv_grid), tuple(extent), causal, q.device, tuple(wrap))
    q, k, v = _rows_last(q), _rows_last(k), _rows_last(v)
    if k_global is not None:
        k_global, v_global = _rows_last(k_global), _rows_last(v_global)
    if key_mask is not None:
        key_mask = key_mask.to(torch.uint8).contiguous()
    return _WindowAttention.apply(q, k, v, k_global, v_global, key_mask, plan)
