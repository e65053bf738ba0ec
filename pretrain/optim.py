"""The optimizer and learning-rate schedule both trainers use: AdamW, linear warm-up, then decay."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from model import typed_config


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (paper: Adam, lr 1e-3, 5% linear warm-up)."""
    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam's moment decay rates (beta1, beta2)."""
    weight_decay: float = 0.01
    """AdamW decay on weight matrices and embeddings (dim ≥ 2); biases, norms and <bos> are not decayed."""
    warmup_fraction: float = 0.05
    """Linear warm-up over this fraction of the run's steps (0: none)."""
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay after warm-up: cosine or linear down to lr × min_lr_ratio at the last step, or none."""
    min_lr_ratio: float = 0.1
    """The decay ends at lr × min_lr_ratio."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping (0 disables)."""
    freeze: list[str] = field(default_factory=list)
    """Parameter name patterns (fnmatch, e.g. "encoder.*") that get no gradient and no optimizer state."""

    def __post_init__(self):
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"optim.betas must be in [0, 1), got {list(self.betas)}")
        typed_config.check_at_least(self, "optim", 0, "weight_decay", "grad_clip")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")


def lr_multiplier(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """step (0-based) → factor of the peak lr; a pure function of the step, so resume needs no state.

    Warm-up steps w = round(warmup_fraction × total_steps) rise linearly to 1 (step w − 1 is at 1);
    the decay then runs from 1 at step w to min_lr_ratio at the last step, total_steps − 1.
    """
    warmup = round(optim.warmup_fraction * total_steps)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
        if optim.decay == "cosine":
            return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if optim.decay == "linear":
            return 1 - (1 - optim.min_lr_ratio) * progress
        return 1.0

    return multiplier


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, device: torch.device, lr: float | None = None,
                    offload: bool = False) -> torch.optim.Optimizer:
    """AdamW with decay on dim ≥ 2 tensors only: DeepSpeedCPUAdam under ZeRO optimizer offload, apex's
    FusedAdam on CUDA when importable, else torch's fused AdamW on CUDA and its plain one on CPU."""
    lr = optim.lr if lr is None else lr
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=lr, betas=optim.betas, adamw_mode=True)
    if device.type == "cuda":
        try:
            from apex.optimizers import FusedAdam
            return FusedAdam(groups, lr=lr, betas=optim.betas, adam_w_mode=True)
        except ImportError:
            return torch.optim.AdamW(groups, lr=lr, betas=optim.betas, fused=True)
    return torch.optim.AdamW(groups, lr=lr, betas=optim.betas)
