"""3DNA: the mask definition against hand-worked cases, and every backend against the reference."""
import pytest
import torch

import os
import subprocess
import sys

from kernels import nearby_attention, nearby_mask
from kernels.blocked import blocked_attention
from kernels.mask import NO_WRAP
from kernels.neighbours import build_window_plan


def visible(mask, query):
    return set(mask[query].nonzero().flatten().tolist())


def test_self_attention_corner_edge_centre():
    m = nearby_mask((1, 3, 3), (1, 3, 3), (1, 3, 3), causal=False)
    assert visible(m, 0) == {0, 1, 3, 4}                     # corner: window cut at the border
    assert visible(m, 1) == {0, 1, 2, 3, 4, 5}               # top edge
    assert visible(m, 4) == set(range(9))                    # centre
    assert visible(m, 8) == {4, 5, 7, 8}


def test_larger_grid_window_is_cut_not_shifted():
    m = nearby_mask((1, 5, 5), (1, 5, 5), (1, 3, 3), causal=False)
    assert visible(m, 0) == {0, 1, 5, 6}  # NATTEN would shift to a full 3x3 window
    assert m.sum(1).tolist() == [4, 6, 6, 6, 4, 6, 9, 9, 9, 6, 6, 9, 9, 9, 6, 6, 9, 9, 9, 6, 4, 6, 6, 6, 4]


def test_window_wider_than_grid_and_full_axis():
    assert nearby_mask((2, 2, 2), (2, 2, 2), (5, 5, 5), causal=False).all()
    assert nearby_mask((3, 4, 5), (3, 4, 5), (None, None, None), causal=False).all()
    m = nearby_mask((1, 1, 6), (1, 1, 6), (1, 1, None), causal=False)
    assert m.all()


def test_video_onto_image_grid():
    m = nearby_mask((10, 21, 21), (1, 21, 21), (3, 3, 3), causal=False)
    assert m.shape == (4410, 441)
    q = 7 * 441 + 0 * 21 + 20                                # frame 7, row 0, last column
    assert visible(m, q) == {19, 20, 40, 41}
    q = 9 * 441 + 10 * 21 + 10                               # every frame projects onto frame 0
    assert visible(m, q) == {r * 21 + c for r in (9, 10, 11) for c in (9, 10, 11)}


def test_onto_coarser_grid_floor_projection():
    m = nearby_mask((4, 6, 6), (2, 3, 3), (1, 1, 1), causal=False)
    q = 3 * 36 + 5 * 6 + 5                                   # (3,5,5) → (1,2,2)
    assert visible(m, q) == {1 * 9 + 2 * 3 + 2}
    q = 2 * 36 + 1 * 6 + 3                                   # (2,1,3) → (1,0,1)
    assert visible(m, q) == {1 * 9 + 0 * 3 + 1}
    m = nearby_mask((4, 6, 6), (2, 3, 3), (3, 3, 3), causal=False)
    assert visible(m, 3 * 36 + 5 * 6 + 5) == {s * 9 + h * 3 + w for s in (0, 1) for h in (1, 2) for w in (1, 2)}


def test_onto_text_positions():
    assert nearby_mask((1, 21, 21), (1, 1, 77), (1, 1, None), causal=False).all()
    m = nearby_mask((1, 21, 21), (1, 1, 77), (1, 1, 3), causal=False)
    assert visible(m, 20) == {72, 73, 74}                    # column 20 → ⌊20·77/21⌋ = 73
    assert visible(m, 21) == {0, 1}                          # column 0 of row 1 → 0, cut at the border


def test_causal_is_raster_order_and_strict():
    m = nearby_mask((1, 3, 3), (1, 3, 3), (1, 3, 3), causal=True)
    assert visible(m, 0) == set()                            # the first query sees no grid key
    assert visible(m, 4) == {0, 1, 2, 3}
    assert visible(m, 8) == {4, 5, 7}
    m = nearby_mask((2, 2, 2), (2, 2, 2), (3, 3, 3), causal=True)
    assert visible(m, 4) == {0, 1, 2, 3}                     # (0,1,1) is earlier in raster order
    assert not m.diagonal().any()


def test_wrap_continues_the_window_on_the_other_side():
    m = nearby_mask((1, 4, 4), (1, 4, 4), (1, 3, 3), causal=False, wrap=(False, True, True))
    assert visible(m, 0) == {r * 4 + c for r in (3, 0, 1) for c in (3, 0, 1)}  # corner: a full 3×3 round the torus
    assert (m.sum(1) == 9).all()
    m = nearby_mask((1, 4, 4), (1, 4, 4), (1, 3, 3), causal=False, wrap=(False, False, True))
    assert visible(m, 0) == {0, 1, 3, 4, 5, 7}                                  # columns wrap, rows are cut
    m = nearby_mask((2, 4, 4), (2, 4, 4), (3, 3, 3), causal=True, wrap=(False, True, True))
    assert visible(m, 16) == {r * 4 + c for r in (3, 0, 1) for c in (3, 0, 1)}  # frame 1 sees frame 0's last row
    assert visible(m, 5) == {0, 1, 2, 4}                                        # causality stays raster order
    assert nearby_mask((1, 4, 4), (1, 4, 4), (1, 5, 5), causal=False, wrap=(False, True, True)).all()


@pytest.mark.parametrize("bad, match", [
    (dict(q_grid=(1, 0, 3)), "q_grid"), (dict(q_grid=(1, 3)), "q_grid"), (dict(kv_grid=(1, -3, 3)), "kv_grid"),
    (dict(kv_grid=(1, 3, 3.0)), "kv_grid"), (dict(extent=(1, 2, 3)), "extent"), (dict(extent=(1, 3, 0)), "extent"),
    (dict(extent=(3, 3)), "extent"), (dict(extent=(3, 3, -1)), "extent"),
    (dict(kv_grid=(1, 2, 2), causal=True), "causal"),
    (dict(wrap=(False, True)), "wrap"), (dict(wrap=(0, 1, 1)), "wrap"),
    (dict(kv_grid=(1, 3, 4), wrap=(False, False, True)), "wrap on axis 2"),
])
def test_mask_rejects_bad_arguments(bad, match):
    args = dict(q_grid=(1, 3, 3), kv_grid=(1, 3, 3), extent=(1, 3, 3), causal=False) | bad
    with pytest.raises(ValueError, match=match):
        nearby_mask(**args)


def _inputs(q_grid, kv_grid, heads=2, dim=8, globals_=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    nq, nk = q_grid[0] * q_grid[1] * q_grid[2], kv_grid[0] * kv_grid[1] * kv_grid[2]
    q = torch.randn(2, heads, nq, dim, generator=gen)
    k, v = (torch.randn(2, heads, nk, dim, generator=gen) for _ in range(2))
    g = [torch.randn(2, heads, globals_, dim, generator=gen) for _ in range(2)] if globals_ else [None, None]
    return [t if t is None else t.requires_grad_() for t in (q, k, v, *g)]


def _run(backend, tensors, q_grid, kv_grid, extent, causal, wrap=(False, False, False), **kw):
    q, k, v, kg, vg = tensors
    if backend == "blocked-tile":
        out = blocked_attention(q, k, v, q_grid, kv_grid, extent, causal, kg, vg, wrap=wrap, **kw)
    else:
        out = nearby_attention(q, k, v, q_grid, kv_grid, extent, causal, backend=backend, k_global=kg, v_global=vg,
                               wrap=wrap)
    weights = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    inputs = [t for t in tensors if t is not None]
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    return out, grads


CASES = [  # q_grid, kv_grid, extent, causal, number of global keys
    ((1, 21, 21), (1, 21, 21), (1, 3, 3), True, 1),          # image decoder self-attention
    ((4, 7, 9), (4, 7, 9), (3, 3, 3), True, 1),              # video, odd sizes
    ((3, 5, 7), (3, 5, 7), (3, 5, 3), False, 0),
    ((1, 1, 13), (1, 1, 13), (1, 1, None), False, 0),        # text encoder
    ((1, 1, 13), (1, 1, 13), (1, 1, 5), True, 2),
    ((5, 6, 7), (1, 6, 7), (3, 3, 3), False, 0),             # video → image cross-attention
    ((3, 6, 6), (2, 3, 4), (3, 3, 3), False, 0),             # onto a coarser grid
    ((2, 3, 3), (3, 8, 7), (1, 3, 1), False, 1),             # onto a finer grid
    ((1, 4, 5), (1, 1, 11), (1, 1, 3), False, 0),            # image → text positions
    ((2, 5, 5), (2, 5, 5), (None, 3, None), True, 1),
]


@pytest.mark.parametrize("q_grid, kv_grid, extent, causal, n_global", CASES)
def test_blocked_equals_reference_forward_and_backward(q_grid, kv_grid, extent, causal, n_global):
    tensors = _inputs(q_grid, kv_grid, globals_=n_global)
    ref_out, ref_grads = _run("reference", tensors, q_grid, kv_grid, extent, causal)
    out, grads = _run("blocked", tensors, q_grid, kv_grid, extent, causal)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tile", [(1, 1, 1), (2, 4, 3), (3, 7, 9), (4, 5, 5)])
def test_blocked_any_tile_shape_equals_reference(tile):
    q_grid = kv_grid = (3, 7, 9)  # tiles that overhang the grid on every axis
    tensors = _inputs(q_grid, kv_grid)
    ref_out, ref_grads = _run("reference", tensors, q_grid, kv_grid, (3, 3, 3), True)
    out, grads = _run("blocked-tile", tensors, q_grid, kv_grid, (3, 3, 3), True, tile=tile)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


WRAP_CASES = [  # q_grid, kv_grid, extent, causal, number of global keys, wrap
    ((4, 7, 9), (4, 7, 9), (3, 3, 3), True, 1, (False, True, True)),   # wrapped video decoder self-attention
    ((1, 5, 6), (1, 5, 6), (1, 3, 5), True, 1, (False, True, True)),
    ((3, 5, 7), (3, 5, 7), (3, 5, 3), False, 0, (True, False, True)),
    ((5, 6, 7), (1, 6, 7), (3, 3, 3), False, 0, (False, True, True)),   # video → image, rows and columns wrap
]


@pytest.mark.parametrize("q_grid, kv_grid, extent, causal, n_global, wrap", WRAP_CASES)
def test_wrapped_windows_blocked_and_flex_equal_reference(q_grid, kv_grid, extent, causal, n_global, wrap):
    tensors = _inputs(q_grid, kv_grid, globals_=n_global)
    ref_out, ref_grads = _run("reference", tensors, q_grid, kv_grid, extent, causal, wrap)
    out, grads = _run("blocked", tensors, q_grid, kv_grid, extent, causal, wrap)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    q, k, v, kg, vg = (t if t is None else t.detach() for t in tensors)
    flex = nearby_attention(q, k, v, q_grid, kv_grid, extent, causal, backend="flex", k_global=kg, v_global=vg,
                            wrap=wrap)
    torch.testing.assert_close(flex, ref_out.detach(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref_out, _run("reference", tensors, q_grid, kv_grid, extent, causal)[0])


@pytest.mark.parametrize("q_grid, kv_grid, extent, causal, n_global", CASES)
def test_flex_equals_reference_forward(q_grid, kv_grid, extent, causal, n_global):
    tensors = [t if t is None else t.detach() for t in _inputs(q_grid, kv_grid, globals_=n_global)]
    q, k, v, kg, vg = tensors
    ref = nearby_attention(q, k, v, q_grid, kv_grid, extent, causal, backend="reference", k_global=kg, v_global=vg)
    out = nearby_attention(q, k, v, q_grid, kv_grid, extent, causal, backend="flex", k_global=kg, v_global=vg)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


FUSED_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU, Triton's interpreter (tests/conftest.py)


@pytest.mark.parametrize("q_grid, kv_grid, extent, causal, n_global, wrap",
                         [case + (NO_WRAP,) for case in CASES] + WRAP_CASES)
def test_fused_equals_reference_forward_and_backward(q_grid, kv_grid, extent, causal, n_global, wrap):
    """The Triton kernel, in Triton's interpreter on CPU (tests/conftest.py), compiled on a GPU. One head (the
    interpreter's time grows with the programs; several batches and heads are in the layout test below)."""
    tensors = [t if t is None else t.detach().to(FUSED_DEVICE).requires_grad_()
               for t in _inputs(q_grid, kv_grid, heads=1, globals_=n_global)]
    ref_out, ref_grads = _run("reference", tensors, q_grid, kv_grid, extent, causal, wrap)
    out, grads = _run("fused", tensors, q_grid, kv_grid, extent, causal, wrap)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("q_grid, extent, causal, n_global", [
    ((1, 1, 13), (1, 1, None), False, 0),   # the text encoder
    ((1, 1, 13), (1, 1, 5), True, 1),
    ((2, 3, 4), (1, 1, None), False, 0),    # a video decoder reading the caption
])
def test_fused_key_mask_equals_reference(q_grid, extent, causal, n_global):
    """Captions of 4 and 13 tokens in 13 slots: the padding slots are no keys, forward and backward."""
    kv_grid = (1, 1, 13)
    q, k, v, kg, vg = (t if t is None else t.detach().to(FUSED_DEVICE)
                       for t in _inputs(q_grid, kv_grid, globals_=n_global))
    key_mask = (torch.arange(13) < torch.tensor([4, 13])[:, None]).to(FUSED_DEVICE)
    results = []
    for backend in ("reference", "fused"):
        leaves = [t if t is None else t.clone().requires_grad_() for t in (q, k, v, kg, vg)]
        out = nearby_attention(*leaves[:3], q_grid, kv_grid, extent, causal, backend=backend, k_global=leaves[3],
                               v_global=leaves[4], key_mask=key_mask)
        weights = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
        results.append((out, torch.autograd.grad((out * weights).sum(), [t for t in leaves if t is not None])))
    (ref, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    assert grads[1][0, :, 4:].abs().max() == 0  # a padding key gets no gradient


def test_fused_reads_the_models_layout_and_keeps_bf16_as_close_as_the_reference():
    """q/k/v as the model passes them (head views of one [B, N, 3·h·D] projection, not contiguous), an odd head
    size: fp32 equals the reference; in bf16 the kernel is no further from the fp32 result than dense SDPA in bf16."""
    gen = torch.Generator().manual_seed(0)
    B, H, D, grid = 2, 3, 24, (4, 5, 6)
    n = grid[0] * grid[1] * grid[2]
    projected = torch.randn(B, n, 3 * H * D, generator=gen).to(FUSED_DEVICE)
    q, k, v = (t.view(B, n, H, D).transpose(1, 2) for t in projected.chunk(3, -1))
    kg, vg = torch.randn(2, B, H, 1, D, generator=gen).to(FUSED_DEVICE)
    results = {}
    runs = (("fp32", "reference", torch.float32), ("fused fp32", "fused", torch.float32),
            ("reference bf16", "reference", torch.bfloat16), ("fused bf16", "fused", torch.bfloat16))
    for name, backend, dtype in runs:
        results[name] = _run(backend, [t.to(dtype).requires_grad_() for t in (q, k, v, kg, vg)], grid, grid, (3, 3, 3),
                             True)
    exact = [results["fp32"][0], *results["fp32"][1]]
    fused32, fused16, dense16 = ([results[name][0], *results[name][1]] for name in ("fused fp32", "fused bf16",
                                                                                    "reference bf16"))
    for got, want in zip(fused32, exact):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for got, dense, want in zip(fused16, dense16, exact):
        error, dense_error = ((t.detach().float() - want).abs().max() / want.abs().max() for t in (got, dense))
        assert error < 2 * dense_error + 1e-3


@pytest.mark.parametrize("q_grid, kv_grid, extent, causal, n_global, wrap",
                         [case + (NO_WRAP,) for case in CASES] + WRAP_CASES)
def test_window_tables_list_exactly_the_mask(q_grid, kv_grid, extent, causal, n_global, wrap):
    """`keys` (per query) and `readers` (per key) each hold exactly the mask's pairs, ascending; both orders are
    permutations that take the grid a TILE box at a time."""
    plan = build_window_plan(q_grid, kv_grid, extent, causal, torch.device("cpu"), wrap)
    mask = nearby_mask(q_grid, kv_grid, extent, causal, wrap)
    for table, rows_are_queries in ((plan.keys, True), (plan.readers, False)):
        listed = torch.zeros_like(mask if rows_are_queries else mask.T)
        rows = torch.arange(table.shape[0])[:, None].expand_as(table)
        used = table >= 0
        listed[rows[used], table[used].long()] = True
        assert torch.equal(listed if rows_are_queries else listed.T, mask)
        ids = torch.where(used, table, torch.iinfo(torch.int32).max)
        assert torch.equal(ids, ids.sort(1).values)
    for order, n in ((plan.q_order, mask.shape[0]), (plan.k_order, mask.shape[1])):
        assert torch.equal(order.sort().values, torch.arange(n, dtype=torch.int32))
    frame = build_window_plan((1, 21, 21), (1, 21, 21), (1, 3, 3), True, torch.device("cpu")).q_order
    assert frame[:64].tolist() == [r * 21 + c for r in range(8) for c in range(8)]


GPU_COMPILE = r"""
import re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import fused

CONSTANTS = dict(SLOTS=13, N_GLOBAL=1, N_READERS=13, HAS_KEY_MASK=True, D=64, D_PAD=64, BLOCK_Q=64, BLOCK_K=64)
FP32 = {"LSE", "DELTA", "DQ"}
for arch in (80, 90):
    for kernel in (fused._window_forward, fused._window_backward_query, fused._window_backward_key):
        signature, constants, attrs = {}, {}, {}
        for i, name in enumerate(kernel.arg_names):
            if name in CONSTANTS:
                signature[name], constants[name] = "constexpr", CONSTANTS[name]
            elif name.isupper():  # a tensor: Triton specialises 16-byte-aligned pointers and strides as we pass them
                signature[name] = "*i32" if name in ("Q_ORDER", "KEYS", "K_ORDER", "READERS") else (
                    "*u8" if name == "KEY_MASK" else "*fp32" if name in FP32 else "*bf16")
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif name in ("scale", "sm_scale"):
                signature[name] = "fp32"
            else:
                signature[name] = "i32"
                if name.startswith("s"):
                    attrs[(i,)] = [["tt.divisibility", 16]]
        compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=GPUTarget("cuda", arch, 32))
        vector_loads = len(re.findall(r"ld\.global(?:\.\w+)*\.v4", compiled.asm["ptx"]))
        print(arch, kernel.__name__, len(compiled.asm["cubin"]), vector_loads)
"""


def test_fused_kernels_compile_for_gpus_without_one():
    """Triton compiles for a GPU target without a GPU: the three kernels build to cubins for sm_80 and sm_90, in
    bf16, with their gathered key and query rows read 16 bytes at a time (vectorised loads)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", GPU_COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    assert len(lines) == 6
    for arch, name, cubin_bytes, vector_loads in lines:
        assert int(cubin_bytes) > 0 and int(vector_loads) > 0, (arch, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward and the CUDA paths need a GPU")
@pytest.mark.parametrize("backend", ["blocked", "flex", "fused"])
@pytest.mark.parametrize("q_grid, kv_grid, extent, causal, n_global", CASES)
def test_cuda_backends_equal_reference(backend, q_grid, kv_grid, extent, causal, n_global):
    tensors = [t if t is None else t.detach().cuda().requires_grad_()
               for t in _inputs(q_grid, kv_grid, dim=16, globals_=n_global)]  # compiled flex: head size >= 16
    ref_out, ref_grads = _run("reference", tensors, q_grid, kv_grid, extent, causal)
    out, grads = _run(backend, tensors, q_grid, kv_grid, extent, causal)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_auto_backend_matches_reference_and_full_windows_skip_the_mask():
    for q_grid, kv_grid, extent, causal, n_global in CASES:
        tensors = [t if t is None else t.detach() for t in _inputs(q_grid, kv_grid, globals_=n_global)]
        q, k, v, kg, vg = tensors
        ref = nearby_attention(q, k, v, q_grid, kv_grid, extent, causal, backend="reference", k_global=kg, v_global=vg)
        auto = nearby_attention(q, k, v, q_grid, kv_grid, extent, causal, k_global=kg, v_global=vg)
        torch.testing.assert_close(auto, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extent", [(1, 1, None), (1, 1, 5)])
def test_key_mask_hides_padding(extent):
    """Text keys past each caption's length: a full window equals attention over the real keys alone,
    and with any window the padded keys' contents change nothing."""
    q_grid, kv_grid, lengths = (1, 1, 13), (1, 1, 13), (4, 13)
    q, k, v, _, _ = (t if t is None else t.detach() for t in _inputs(q_grid, kv_grid, globals_=0))
    key_mask = torch.arange(13) < torch.tensor(lengths)[:, None]  # (B, Nk)
    out = nearby_attention(q, k, v, q_grid, kv_grid, extent, key_mask=key_mask)
    garbage = torch.where(key_mask[:, None, :, None], k, 100.0), torch.where(key_mask[:, None, :, None], v, 100.0)
    torch.testing.assert_close(nearby_attention(q, *garbage, q_grid, kv_grid, extent, key_mask=key_mask), out)
    if extent[2] is None:
        for b, n in enumerate(lengths):
            alone = torch.nn.functional.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n])
            torch.testing.assert_close(out[b:b + 1], alone)
    assert not torch.allclose(nearby_attention(q, k, v, q_grid, kv_grid, extent), out)
    with pytest.raises(ValueError, match="key_mask must be bool"):
        nearby_attention(q, k, v, q_grid, kv_grid, extent, key_mask=key_mask.long())


def test_attention_rejects_bad_arguments():
    q, k, v, kg, vg = (t.detach() for t in _inputs((1, 3, 3), (1, 3, 3)))
    with pytest.raises(ValueError, match="q has 9 tokens but q_grid"):
        nearby_attention(q, k, v, (1, 3, 4), (1, 3, 3), (1, 3, 3), False)
    with pytest.raises(ValueError, match="k/v have 9/9 tokens but kv_grid"):
        nearby_attention(q, k, v, (1, 3, 3), (1, 1, 3), (1, 3, 3), False)
    with pytest.raises(ValueError, match="extent"):
        nearby_attention(q, k, v, (1, 3, 3), (1, 3, 3), (1, 3, 4), False)
    with pytest.raises(ValueError, match="k_global"):
        nearby_attention(q, k, v, (1, 3, 3), (1, 3, 3), (1, 3, 3), True)
    with pytest.raises(ValueError, match="together"):
        nearby_attention(q, k, v, (1, 3, 3), (1, 3, 3), (1, 3, 3), False, k_global=kg)
    with pytest.raises(ValueError, match=r"q must be \[B, heads, N, D\]"):
        nearby_attention(q[0], k, v, (1, 3, 3), (1, 3, 3), (1, 3, 3), False)
    with pytest.raises(ValueError, match="backend"):
        nearby_attention(q, k, v, (1, 3, 3), (1, 3, 3), (1, 3, 3), False, backend="natten")


@pytest.mark.parametrize("q_grid, kv_grid, extent, causal, wrap", [
    ((10, 21, 21), (10, 21, 21), (3, 3, 3), True, (False, False, False)),
    ((3, 9, 11), (3, 9, 11), (3, 5, 5), True, (False, True, True)),
    ((2, 10, 10), (2, 10, 10), (None, 3, 3), False, (False, False, False)),
    ((2, 4, 4), (4, 8, 8), (3, 3, 3), False, (False, False, False)),
])
def test_work_counts_match_the_masks_they_stand_for(q_grid, kv_grid, extent, causal, wrap):
    """kernels/work.py counts without building the big masks; here it is held to the masks themselves."""
    from kernels.attention import reference_mask
    from kernels.blocked import build_plan
    from kernels.flex import build_block_mask
    from kernels.work import computed_pairs, flex_blocks, visible_pairs

    cpu = torch.device("cpu")
    mask = reference_mask(q_grid, kv_grid, extent, causal, 1, cpu, wrap)
    assert visible_pairs(q_grid, kv_grid, extent, causal, 1, wrap) == int(mask.sum())
    assert computed_pairs("reference", q_grid, kv_grid, extent, causal, 1, wrap) == mask.numel()
    plan = build_plan(q_grid, kv_grid, extent, causal, 1, cpu, None, wrap)
    assert computed_pairs("blocked", q_grid, kv_grid, extent, causal, 1, wrap) == plan.mask.numel()
    blocks = build_block_mask(q_grid, kv_grid, extent, causal, 1, cpu, wrap)
    expected = int(blocks.kv_num_blocks.sum()) + (0 if blocks.full_kv_num_blocks is None
                                                  else int(blocks.full_kv_num_blocks.sum()))
    assert flex_blocks(q_grid, kv_grid, extent, causal, 1, wrap) == expected
    table = build_window_plan(q_grid, kv_grid, extent, causal, cpu, wrap).keys
    assert computed_pairs("fused", q_grid, kv_grid, extent, causal, 1, wrap) == table.numel() + table.shape[0]
    assert int((table >= 0).sum()) + table.shape[0] == int(mask.sum())
