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
from kernels.neighbours import build_window_plan

BLOCK = 64
"""Queries (keys, backward) per program: one TILE box of kernels/neighbours.py."""
LOG2_E = 1.4426950408889634
MASKED = tl.constexpr(-1.0e30)  # a score no visible key reaches; finite, so that a running maximum is never -inf


@triton.jit
def _window_forward(Q, K, V, KG, VG, O, LSE, Q_ORDER, KEYS, KEY_MASK,
                    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sg_b, sg_h, sg_n, so_b, so_h, so_n,
                    n_heads, n_q, n_k, scale,
                    SLOTS: tl.constexpr, N_GLOBAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, D: tl.constexpr,
                    D_PAD: tl.constexpr, BLOCK_Q: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // n_heads, bh % n_heads
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < n_q
    query = tl.load(Q_ORDER + rows, mask=row_ok, other=0).to(tl.int64)
    d = tl.arange(0, D_PAD)
    d_ok = d < D
    q = tl.load(Q + b * sq_b + h * sq_h + query[:, None] * sq_n + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32) * scale  # log2 units
    m = tl.full([BLOCK_Q], MASKED, tl.float32)
    l = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, D_PAD], tl.float32)
    for g in range(N_GLOBAL):  # every query sees the global keys
        kg = tl.load(KG + b * sg_b + h * sg_h + g * sg_n + d, mask=d_ok, other=0.0).to(tl.float32)
        vg = tl.load(VG + b * sg_b + h * sg_h + g * sg_n + d, mask=d_ok, other=0.0).to(tl.float32)
        s = tl.sum(q * kg[None, :], 1)
        m_new = tl.maximum(m, s)
        alpha, p = tl.exp2(m - m_new), tl.exp2(s - m_new)
        l = l * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * vg[None, :]
        m = m_new
    for slot in range(SLOTS):
        key = tl.load(KEYS + query * SLOTS + slot, mask=row_ok, other=-1).to(tl.int64)
        ok = key >= 0
        if HAS_KEY_MASK:  # padding slots of a caption are no key
            ok = ok & (tl.load(KEY_MASK + b * n_k + key, mask=ok, other=0) != 0)
        k = tl.load(K + b * sk_b + h * sk_h + key[:, None] * sk_n + d[None, :],
                    mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        v = tl.load(V + b * sv_b + h * sv_h + key[:, None] * sv_n + d[None, :],
                    mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        s = tl.where(ok, tl.sum(q * k, 1), MASKED)
        m_new = tl.maximum(m, s)
        alpha, p = tl.exp2(m - m_new), tl.where(ok, tl.exp2(s - m_new), 0.0)
        l = l * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * v
        m = m_new
    l = tl.where(l > 0, l, 1.0)  # only rows past the end have no key
    tl.store(O + b * so_b + h * so_h + query[:, None] * so_n + d[None, :], (acc / l[:, None]).to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * n_q + query, m + tl.log2(l), mask=row_ok)


@triton.jit
def _window_backward_query(Q, K, V, DO, DQ, LSE, DELTA, Q_ORDER, KEYS, KEY_MASK,
                           sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_n,
                           sdq_b, sdq_h, sdq_n, n_heads, n_q, n_k, scale, sm_scale,
                           SLOTS: tl.constexpr, HAS_KEY_MASK: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                           BLOCK_Q: tl.constexpr):
    """dQ (fp32) from the window keys; the globals' share is added outside."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // n_heads, bh % n_heads
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < n_q
    query = tl.load(Q_ORDER + rows, mask=row_ok, other=0).to(tl.int64)
    d = tl.arange(0, D_PAD)
    row_d = row_ok[:, None] & (d < D)[None, :]
    q = tl.load(Q + b * sq_b + h * sq_h + query[:, None] * sq_n + d[None, :], mask=row_d, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdo_b + h * sdo_h + query[:, None] * sdo_n + d[None, :], mask=row_d, other=0.0).to(tl.float32)
    lse = tl.load(LSE + bh * n_q + query, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh * n_q + query, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_Q, D_PAD], tl.float32)
    for slot in range(SLOTS):
        key = tl.load(KEYS + query * SLOTS + slot, mask=row_ok, other=-1).to(tl.int64)
        ok = key >= 0
        if HAS_KEY_MASK:
            ok = ok & (tl.load(KEY_MASK + b * n_k + key, mask=ok, other=0) != 0)
        key_d = ok[:, None] & (d < D)[None, :]
        k = tl.load(K + b * sk_b + h * sk_h + key[:, None] * sk_n + d[None, :], mask=key_d, other=0.0).to(tl.float32)
        v = tl.load(V + b * sv_b + h * sv_h + key[:, None] * sv_n + d[None, :], mask=key_d, other=0.0).to(tl.float32)
        p = tl.where(ok, tl.exp2(tl.sum(q * k, 1) * scale - lse), 0.0)
        ds = p * (tl.sum(do * v, 1) - delta)
        dq += ds[:, None] * k
    tl.store(DQ + b * sdq_b + h * sdq_h + query[:, None] * sdq_n + d[None, :], dq * sm_scale, mask=row_d)


@triton.jit
def _window_backward_key(Q, K, V, DO, DK, DV, LSE, DELTA, K_ORDER, READERS, KEY_MASK,
                         sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_n,
                         sdk_b, sdk_h, sdk_n, sdv_b, sdv_h, sdv_n, n_heads, n_q, n_k, scale, sm_scale,
                         N_READERS: tl.constexpr, HAS_KEY_MASK: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """dK and dV of the grid keys, each from the queries that read it (zero for a padding key)."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // n_heads, bh % n_heads
    rows = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < n_k
    key = tl.load(K_ORDER + rows, mask=row_ok, other=0).to(tl.int64)
    key_ok = row_ok
    if HAS_KEY_MASK:
        key_ok = key_ok & (tl.load(KEY_MASK + b * n_k + key, mask=row_ok, other=0) != 0)
    d = tl.arange(0, D_PAD)
    row_d = row_ok[:, None] & (d < D)[None, :]
    k = tl.load(K + b * sk_b + h * sk_h + key[:, None] * sk_n + d[None, :], mask=row_d, other=0.0).to(tl.float32)
    v = tl.load(V + b * sv_b + h * sv_h + key[:, None] * sv_n + d[None, :], mask=row_d, other=0.0).to(tl.float32)
    dk = tl.zeros([BLOCK_K, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_K, D_PAD], tl.float32)
    for slot in range(N_READERS):
        query = tl.load(READERS + key * N_READERS + slot, mask=key_ok, other=-1).to(tl.int64)
        ok = query >= 0
        query_d = ok[:, None] & (d < D)[None, :]
        q = tl.load(Q + b * sq_b + h * sq_h + query[:, None] * sq_n + d[None, :], mask=query_d, other=0.0).to(tl.float32)
        do = tl.load(DO + b * sdo_b + h * sdo_h + query[:, None] * sdo_n + d[None, :], mask=query_d,
                     other=0.0).to(tl.float32)
        lse = tl.load(LSE + bh * n_q + query, mask=ok, other=0.0)
        delta = tl.load(DELTA + bh * n_q + query, mask=ok, other=0.0)
        p = tl.where(ok, tl.exp2(tl.sum(q * k, 1) * scale - lse), 0.0)
        dv += p[:, None] * do
        ds = p * (tl.sum(do * v, 1) - delta)
        dk += ds[:, None] * q
    tl.store(DK + b * sdk_b + h * sdk_h + key[:, None] * sdk_n + d[None, :], (dk * sm_scale).to(DK.dtype.element_ty),
             mask=row_d)
    tl.store(DV + b * sdv_b + h * sdv_h + key[:, None] * sdv_n + d[None, :], dv.to(DV.dtype.element_ty), mask=row_d)


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
