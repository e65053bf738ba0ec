"""Benchmark 3D nearby attention: the fast paths against the dense reference.

Forward + backward, causal, one <bos> global key, batch 1. Prints time and peak memory side by
side, and the ratios to the reference. On CPU the backends are reference and blocked (peak live
tensor bytes); on CUDA also flex and fused (peak allocated bytes).

    python tools/bench_3dna.py                      # the CPU table in docs/benchmarks.md
    python tools/bench_3dna.py --device cuda --heads 20 --dtype bf16 --frames 1 10 20 40
    python tools/bench_3dna.py --work               # work per backend as a multiple of the visible pairs

`--work` runs nothing: it counts the query-key pairs each backend computes (kernels/work.py), padding and
masked pairs in its tiles included, against the pairs the mask allows. On a GPU, where these kernels are
bound by arithmetic, the ratio of two backends' multiples predicts their speed ratio.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from kernels import nearby_attention
from kernels.attention import reference_mask
from kernels.blocked import build_plan
from kernels.neighbours import build_window_plan
from kernels.work import computed_pairs, visible_pairs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage created inside the block, forward and backward.

    Counting storages (not the process's resident set) keeps the figure independent of the
    malloc in use and of what it returns to the OS.
    """

    def __enter__(self):
        self.live = self.peak = 0
        self._seen: set[int] = set()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out

    def _track(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or key in self._seen:
            return
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int):
        self.live -= nbytes
        self._seen.discard(key)


def keep_freed_memory_in_heap():
    """Ask glibc to serve large buffers from its heap instead of fresh mmap pages.

    By default every buffer over ~32 MB is mapped fresh and page-faulted on first touch, a cost
    that grows with buffer size and hides the kernels' own scaling; jemalloc/tcmalloc (the usual
    advice for PyTorch on CPU) behave like this setting.
    """
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 2**30)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def measure(frames: int, backend: str, heads: int, head_dim: int, extent, repeats: int, device, dtype):
    """Median seconds and peak bytes (plus the cached mask/plan) of one forward+backward."""
    grid = (frames, 21, 21)
    n = frames * 21 * 21
    gen = torch.Generator(device).manual_seed(0)

    def leaf(length):
        return torch.randn(1, heads, length, head_dim, generator=gen, device=device, dtype=dtype).requires_grad_()

    q, k, v, kg, vg = leaf(n), leaf(n), leaf(n), leaf(1), leaf(1)

    def step():
        out = nearby_attention(q, k, v, grid, grid, extent, causal=True, backend=backend, k_global=kg, v_global=vg)
        out.sum().backward()
        for t in (q, k, v, kg, vg):
            t.grad = None

    step()  # warm-up: builds the cached mask/plan (and compiles flex) for this grid
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with PeakTensorMemory() as mem:
            step()
        peak = mem.peak
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak + cached_bytes(backend, grid, extent)


def cached_bytes(backend: str, grid, extent) -> int:
    """Size of the mask (reference), gather plan (blocked) or index tables (fused) kept per grid."""
    cpu = torch.device("cpu")
    if backend == "reference":
        return reference_mask(grid, grid, extent, True, 1, cpu).nbytes
    if backend == "flex":
        return 0  # its block mask lives on the device, inside the allocated peak
    if backend == "fused":
        plan = build_window_plan(grid, grid, extent, True, cpu)
        return sum(t.nbytes for t in (plan.q_order, plan.keys, plan.k_order, plan.readers))
    plan = build_plan(grid, grid, extent, True, 1, cpu)
    return sum(t.nbytes for t in (plan.q_index, plan.q_inverse, plan.kv_index, plan.mask))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 10, 20, 40])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--extent", type=int, nargs=3, default=[3, 3, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--glibc-default", action="store_true",
                        help="keep glibc's mmap threshold: large buffers are page-faulted anew on every call")
    parser.add_argument("--work", action="store_true", help="count the work per backend instead of timing it")
    args = parser.parse_args()
    if args.work:
        return print_work(args.frames, tuple(args.extent))
    device = torch.device(args.device)
    backends = ["reference", "blocked"] + (["flex", "fused"] if device.type == "cuda" else [])
    if device.type == "cpu" and not args.glibc_default:
        keep_freed_memory_in_heap()
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"{torch.get_num_threads()} threads, "
             f"{'glibc default malloc' if args.glibc_default else 'large buffers kept in the heap'}")
    print(f"3DNA forward+backward, causal, extent {tuple(args.extent)}, {args.heads} heads of {args.head_dim}, "
          f"{args.dtype}, {where}; memory = peak {'allocated' if device.type == 'cuda' else 'live tensor'} bytes "
          f"incl. the cached mask/plan; ratios = reference / backend")
    others = backends[1:]
    header = (f"{'grid':>10} | " + " ".join(f"{b + ' ms':>12}" for b in backends) + " | "
              + " ".join(f"{b + ' speed-up':>16}" for b in others) + " | "
              + " ".join(f"{b + ' MB':>12}" for b in backends) + " | "
              + " ".join(f"{b + ' mem ratio':>17}" for b in others))
    print(header)
    print("-" * len(header))
    for frames in args.frames:
        results = {b: measure(frames, b, args.heads, args.head_dim, tuple(args.extent), args.repeats, device,
                              DTYPES[args.dtype]) for b in backends}
        (t_ref, m_ref) = results["reference"]
        print(f"{f'{frames}x21x21':>10} | " + " ".join(f"{results[b][0] * 1e3:12.1f}" for b in backends) + " | "
              + " ".join(f"{t_ref / results[b][0]:15.1f}x" for b in others) + " | "
              + " ".join(f"{results[b][1] / 2**20:12.1f}" for b in backends) + " | "
              + " ".join(f"{m_ref / max(results[b][1], 1):16.1f}x" for b in others))


def print_work(frames: list[int], extent) -> None:
    """The work table: visible pairs, and per backend the pairs computed and their multiple of the visible."""
    backends = ("reference", "blocked", "flex", "fused")
    print(f"3DNA work, causal, extent {extent}, one <bos> global key: query-key pairs computed (tiles, padding and "
          f"masked pairs included) as a multiple of the visible pairs; the ideal is 1")
    header = (f"{'grid':>10} | {'visible':>10} | " + " ".join(f"{b + ' pairs':>16}" for b in backends) + " | "
              + " ".join(f"{b + ' ×':>12}" for b in backends))
    print(header)
    print("-" * len(header))
    for n in frames:
        grid = (n, 21, 21)
        visible = visible_pairs(grid, grid, extent, True, 1)
        pairs = {b: computed_pairs(b, grid, grid, extent, True, 1) for b in backends}
        print(f"{f'{n}x21x21':>10} | {visible:>10,} | " + " ".join(f"{pairs[b]:>16,}" for b in backends) + " | "
              + " ".join(f"{pairs[b] / visible:>11.2f}x" for b in backends))


if __name__ == "__main__":
    main()
