"""Benchmark 3D nearby attention: the blocked fast path against the dense reference.

Forward + backward, causal, one <bos> global key, float32, batch 1. Prints time and peak
tensor memory side by side, and the ratios.

    python tools/bench_3dna.py                      # the README table
    python tools/bench_3dna.py --frames 1 10 --heads 2
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


def measure(frames: int, backend: str, heads: int, head_dim: int, extent, repeats: int):
    """Median seconds and peak tensor bytes (plus the cached mask/plan) of one forward+backward."""
    grid = (frames, 21, 21)
    n = frames * 21 * 21
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen, requires_grad=True) for _ in range(3))
    kg, vg = (torch.randn(1, heads, 1, head_dim, generator=gen, requires_grad=True) for _ in range(2))

    def step():
        out = nearby_attention(q, k, v, grid, grid, extent, causal=True, backend=backend, k_global=kg, v_global=vg)
        out.sum().backward()
        for t in (q, k, v, kg, vg):
            t.grad = None

    step()  # warm-up: builds the cached mask/plan for this grid
    with PeakTensorMemory() as mem:
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), mem.peak + cached_bytes(backend, grid, extent)


def cached_bytes(backend: str, grid, extent) -> int:
    """Size of the mask (reference) or gather plan (blocked) that the backend keeps per grid."""
    cpu = torch.device("cpu")
    if backend == "reference":
        return reference_mask(grid, grid, extent, True, 1, cpu).nbytes
    plan = build_plan(grid, grid, extent, True, 1, cpu)
    return sum(t.nbytes for t in (plan.q_index, plan.q_inverse, plan.kv_index, plan.mask))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 10, 20, 40])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--extent", type=int, nargs=3, default=[3, 3, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--glibc-default", action="store_true",
                        help="keep glibc's mmap threshold: large buffers are page-faulted anew on every call")
    args = parser.parse_args()
    if not args.glibc_default:
        keep_freed_memory_in_heap()
    print(f"3DNA forward+backward, causal, extent {tuple(args.extent)}, {args.heads} heads of {args.head_dim}, "
          f"float32, {torch.get_num_threads()} threads, "
          f"{'glibc default malloc' if args.glibc_default else 'large buffers kept in the heap'}; "
          f"memory = peak live tensor bytes incl. the cached mask/plan")
    header = f"{'grid':>10} | {'dense ms':>9} {'blocked ms':>10} {'speed-up':>8} | {'dense MB':>9} {'blocked MB':>10} {'mem ratio':>9}"
    print(header)
    print("-" * len(header))
    for frames in args.frames:
        extent = tuple(args.extent)
        t_ref, m_ref = measure(frames, "reference", args.heads, args.head_dim, extent, args.repeats)
        t_blk, m_blk = measure(frames, "blocked", args.heads, args.head_dim, extent, args.repeats)
        print(f"{f'{frames}x21x21':>10} | {t_ref * 1e3:9.1f} {t_blk * 1e3:10.1f} {t_ref / t_blk:7.1f}x | "
              f"{m_ref / 2**20:9.1f} {m_blk / 2**20:10.1f} {m_ref / max(m_blk, 1):8.1f}x")


if __name__ == "__main__":
    main()
