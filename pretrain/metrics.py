"""Training metrics: per-step JSON lines, TensorBoard scalars, a progress bar, a summary line."""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm


class MetricLogger:
    """Rank 0 only: `metrics.jsonl` gets every step; TensorBoard and the bar every `log_every` steps."""

    def __init__(self, output_dir: str | Path, start_step: int, total_steps: int, log_every: int, enabled: bool):
        self.enabled, self.log_every = enabled, log_every
        self.start_step, self.total_steps = start_step, total_steps
        self.start_time = self.window_start = time.perf_counter()
        self.window = defaultdict(list)
        self.totals = defaultdict(float)
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        output_dir = Path(output_dir)
        self.jsonl = open(output_dir / "metrics.jsonl", "a")
        self.tensorboard = SummaryWriter(str(output_dir / "tb"))
        self.bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", unit="step", dynamic_ncols=True)

    def log_step(self, step: int, losses: dict[str, list[float]], lr: float, grad_norm: float | None,
                 samples: int, tokens: int):
        """`losses` maps task → the (rank-averaged) losses of its micro-steps in this step."""
        self.totals["samples"] += samples
        self.totals["tokens"] += tokens
        self.totals["steps"] += 1
        if not self.enabled:
            return
        all_losses = [x for v in losses.values() for x in v]
        record = {"step": step, "loss": sum(all_losses) / len(all_losses), "lr": lr, "grad_norm": grad_norm,
                  **{f"loss/{task}": sum(v) / len(v) for task, v in losses.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in record.items():
            if key != "step" and value is not None:
                self.window[key].append(value)
        self.window["samples"].append(samples)
        self.window["tokens"].append(tokens)
        self.bar.update(1)
        if step % self.log_every == 0 or step == self.total_steps:
            self._flush(step)

    def _flush(self, step: int):
        elapsed = time.perf_counter() - self.window_start
        samples, tokens = sum(self.window.pop("samples")), sum(self.window.pop("tokens"))
        for key, values in self.window.items():
            self.tensorboard.add_scalar(key, sum(values) / len(values), step)
        self.tensorboard.add_scalar("throughput/samples_per_s", samples / elapsed, step)
        self.tensorboard.add_scalar("throughput/tokens_per_s", tokens / elapsed, step)
        loss = self.window.get("loss", [float("nan")])
        self.bar.set_postfix(loss=f"{sum(loss) / len(loss):.4f}", lr=f"{self.window['lr'][-1]:.2e}",
                             tok_s=f"{tokens / elapsed:.0f}")
        self.window.clear()
        self.window_start = time.perf_counter()

    def log_images(self, step: int, images: dict):
        """name → uint8 [N, 3, H, W]; a video's frames are shown as N images."""
        if self.enabled:
            for name, batch in images.items():
                self.tensorboard.add_images(name, batch, step, dataformats="NCHW")

    def log_event(self, message: str):
        if self.enabled:
            self.bar.write(message)

    def close(self) -> str:
        """Closes the writers and returns the summary line (also printed on rank 0)."""
        elapsed = time.perf_counter() - self.start_time
        t = self.totals
        summary = (f"trained {int(t['steps'])} steps ({self.start_step} → {self.start_step + int(t['steps'])}) in "
                   f"{elapsed:.1f}s: {int(t['samples'])} samples, {int(t['tokens'])} tokens, "
                   f"{t['samples'] / elapsed:.2f} samples/s, {t['tokens'] / elapsed:.0f} tokens/s")
        if self.enabled:
            self.bar.close()
            self.tensorboard.close()
            self.jsonl.close()
            print(summary, flush=True)
        return summary
