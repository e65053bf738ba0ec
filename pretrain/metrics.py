"""Training metrics for both trainers: per-step JSON lines, TensorBoard scalars, a progress bar, a summary line."""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm


class MetricLogger:
    """Rank 0 only: `metrics.jsonl` gets every step (scalars and counts); TensorBoard (`tb/`) and the bar
    every `log_every` steps.

    A step logs scalars (averaged over the `log_every` window in TensorBoard) and counts (summed, and
    shown as rates: `throughput/{name}_per_s`). The bar shows the scalars named in `show` and the rate
    of the count named `rate`; the summary line totals the counts named in `summary` (all when None).
    """

    def __init__(self, output_dir: str | Path, start_step: int, total_steps: int, log_every: int, enabled: bool,
                 desc: str, show: tuple[str, ...] = ("loss", "lr"), rate: str = "tokens",
                 summary: tuple[str, ...] | None = None):
        self.enabled, self.log_every, self.show, self.rate, self.summary = enabled, log_every, show, rate, summary
        self.start_step, self.total_steps = start_step, total_steps
        self.start_time = self.window_start = time.perf_counter()
        self.window = defaultdict(list)
        self.counts = defaultdict(int)
        self.totals = defaultdict(int)
        self.steps = 0
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(output_dir / "metrics.jsonl", "a")
        self.tensorboard = SummaryWriter(str(output_dir / "tb"))
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True)

    def log_step(self, step: int, scalars: dict[str, float | None], counts: dict[str, int]):
        """`step` has just finished; `scalars` may hold None for a value not known at this step."""
        self.steps += 1
        for name, n in counts.items():
            self.totals[name] += n
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **scalars, **counts}) + "\n")
        self.jsonl.flush()
        for key, value in scalars.items():
            if value is not None:
                self.window[key].append(value)
        for name, n in counts.items():
            self.counts[name] += n
        self.bar.update(1)
        if step % self.log_every == 0 or step == self.total_steps:
            self._flush(step)

    def _flush(self, step: int):
        elapsed = time.perf_counter() - self.window_start
        means = {key: sum(values) / len(values) for key, values in self.window.items()}
        for key, value in means.items():
            self.tensorboard.add_scalar(key, value, step)
        rates = {name: n / elapsed for name, n in self.counts.items()}
        for name, rate in rates.items():
            self.tensorboard.add_scalar(f"throughput/{name}_per_s", rate, step)
        postfix = {key: f"{means[key]:.4g}" for key in self.show if key in means}
        if self.rate in rates:
            postfix[f"{self.rate}/s"] = f"{rates[self.rate]:.0f}"
        self.bar.set_postfix(postfix)
        self.window.clear()
        self.counts.clear()
        self.window_start = time.perf_counter()

    def log_images(self, step: int, images: dict):
        """name → [N, 3, H, W] (uint8, or float in [0, 1]); a video's frames are shown as N images."""
        if self.enabled:
            for name, batch in images.items():
                self.tensorboard.add_images(name, batch, step, dataformats="NCHW")

    def log_event(self, message: str):
        if self.enabled:
            self.bar.write(message)

    def abort(self):
        """Close the bar and the writers without a summary (the run failed; its error comes next)."""
        if self.enabled:
            self.bar.close()
            self.tensorboard.close()
            self.jsonl.close()

    def close(self) -> str:
        """Closes the writers and returns the summary line (also printed on rank 0)."""
        elapsed = time.perf_counter() - self.start_time
        totals = {name: n for name, n in self.totals.items() if self.summary is None or name in self.summary}
        counted = ", ".join(f"{n} {name}" for name, n in totals.items())
        rates = ", ".join(f"{n / elapsed:.{2 if n / elapsed < 100 else 0}f} {name}/s" for name, n in totals.items())
        summary = (f"trained {self.steps} steps ({self.start_step} → {self.start_step + self.steps}) in "
                   f"{elapsed:.1f}s: {counted}, {rates}")
        if self.enabled:
            self.bar.close()
            self.tensorboard.close()
            self.jsonl.close()
            print(summary, flush=True)
        return summary
