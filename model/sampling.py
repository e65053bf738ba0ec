"""Autoregressive sampling from NÜWA, with a KV cache whose 3DNA reads only each new token's window.

`generate` fills a code grid in raster order. Positions where `keep` is True are copied from
`reference` instead of sampled (they still pass through the decoder so later tokens see them):
that one rule serves every task — T2I/T2V keep nothing, V2V and TV2V keep the first frames,
I2I keeps the top rows, TI2I keeps everything outside the edited region.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.blocked import build_plan
from kernels.mask import NO_WRAP
from model.nuwa import Nuwa, rotate


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    """0 = greedy (argmax)."""
    top_k: int = 0
    """Keep the k most likely codes (0 = all)."""
    top_p: float = 1.0
    """Keep the smallest set of codes whose probability reaches p (1 = all)."""
    guidance: float = 1.0
    """Classifier-free guidance scale s: logits = uncond + s · (cond − uncond), the unconditional
    logits taken under `generate(unconditional=…)` (the "None" text). 1 = off. Useful once the model
    was trained with data.caption_dropout (videos: V2V already trains under "None")."""


def sample_logits(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V] → codes [B]; with `noise` [B] (uniform in [0, 1)) by the inverse CDF instead of `generator`."""
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / config.temperature
    if config.top_k > 0:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= config.top_p  # keep the first code that crosses p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    if noise is not None:
        cdf = probs.cumsum(-1)  # the first code whose cumulative probability exceeds the draw
        drawn = torch.searchsorted(cdf, (noise.to(cdf) * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
        return drawn.clamp_max(probs.shape[-1] - 1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _windows(q_grid, kv_grid, extent, causal, device, wrap=NO_WRAP):
    """Per query, the key indices of its window ([N, W] long) and which slots are real ([N, W] bool)."""
    plan = build_plan(tuple(q_grid), tuple(kv_grid), tuple(extent), causal, 0, device, (1, 1, 1), wrap)
    n = q_grid[0] * q_grid[1] * q_grid[2]
    return plan.kv_index.view(n, plan.tile_k), plan.mask.view(n, plan.tile_k)


class DecoderCache:
    """Per decoder layer: <bos> key/value, grid keys/values filled as tokens arrive, condition keys/values."""

    def __init__(self, model: Nuwa, condition: torch.Tensor, condition_keys: torch.Tensor | None,
                 grid: tuple[int, int, int]):
        B, n = condition.shape[0], grid[0] * grid[1] * grid[2]
        d, heads = model.config.width, model.config.heads
        device, dtype = condition.device, condition.dtype
        self.grid_k = [torch.zeros(B, heads, n, d // heads, device=device, dtype=dtype) for _ in model.decoder]
        self.grid_v = [torch.zeros_like(k) for k in self.grid_k]
        self.bos_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.decoder)
        self.condition_kv = []
        for block in model.decoder:
            k, v = block.cross_attn.key_value(condition).chunk(2, dim=-1)
            self.condition_kv.append((block.cross_attn.split_heads(k), block.cross_attn.split_heads(v)))
        condition_grid, condition_extent = model.condition_window(grid, condition_keys, condition.shape[1])
        self.self_window = _windows(grid, grid, model.extent_for(grid), True, device, model.wrap())
        cross_index, cross_mask = _windows(grid, condition_grid, condition_extent, False, device)
        keys = torch.ones_like(condition[..., 0], dtype=torch.bool) if condition_keys is None else condition_keys
        self.cross_index, self.cross_visible = cross_index, cross_mask & keys[:, cross_index]  # (B, n, W)
        self.angles = model.rotary_angles(grid)  # (n, hd/2) or None


def _attend(attn, q, keys, values, visible):
    """One query against a gathered window: q [B,h,1,hd], keys/values [B,h,W,hd], visible [W] or [B, W]."""
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[..., None, None, :])
    B = y.shape[0]
    return attn.proj(y.transpose(1, 2).reshape(B, 1, -1))


def decode_step(model: Nuwa, cache: DecoderCache, x: torch.Tensor, t: int) -> torch.Tensor:
    """Run slot t (x [B, 1, d], already embedded) through the decoder; returns logits [B, V] for token t."""
    index, visible = cache.self_window[0][t], cache.self_window[1][t]
    cross_index, cross_visible = cache.cross_index[t], cache.cross_visible[:, t]  # (W,), (B, W)
    true = torch.ones(1, dtype=torch.bool, device=x.device)
    for i, block in enumerate(model.decoder):
        attn = block.self_attn
        h = block.norm_self(x)
        q = attn.split_heads(attn.query(h))
        k, v = (attn.split_heads(z) for z in attn.key_value(h).chunk(2, dim=-1))
        if cache.angles is not None:  # query of token t; the key computed here is token t-1's
            q = rotate(q, cache.angles[t: t + 1])
            k = k if t == 0 else rotate(k, cache.angles[t - 1: t])
        if t == 0:
            cache.bos_kv[i] = (k, v)  # slot 0 is <bos>: the global key
        else:
            cache.grid_k[i][:, :, t - 1] = k[:, :, 0]  # slot t holds the key of token t-1
            cache.grid_v[i][:, :, t - 1] = v[:, :, 0]
        bos_k, bos_v = cache.bos_kv[i]
        keys = torch.cat([bos_k, cache.grid_k[i][:, :, index]], 2)
        values = torch.cat([bos_v, cache.grid_v[i][:, :, index]], 2)
        x = x + _attend(attn, q, keys, values, torch.cat([true, visible]))

        cross = block.cross_attn
        q = cross.split_heads(cross.query(block.norm_cross(x)))
        cond_k, cond_v = cache.condition_kv[i]
        x = x + _attend(cross, q, cond_k[:, :, cross_index], cond_v[:, :, cross_index], cross_visible)
        x = x + block.mlp(block.norm_mlp(x))
    return model.head(model.decoder_norm(x))[:, 0]


@torch.no_grad()
def generate(model: Nuwa, text: torch.Tensor, grid: tuple[int, int, int], *, reference: torch.Tensor | None = None,
             keep: torch.Tensor | None = None, sampling: SamplingConfig = SamplingConfig(),
             generator: torch.Generator | None = None, use_cache: bool = True,
             unconditional: torch.Tensor | None = None, noise: torch.Tensor | None = None,
             sketch: torch.Tensor | None = None) -> torch.Tensor:
    """text [B, 77] → codes [B, S, H, W]; `keep` [S, H, W] (or [B, S, H, W]) copies `reference` there.
    With `sketch` [B, S, H, W] (sketch codes, S2I/S2V) the condition is the sketch instead of the text.

    With sampling.guidance ≠ 1, `unconditional` [B, 77] (or [1, 77]) is the text of the unconditional
    model; both halves run as one batch of 2B and share every sampled token.
    `noise` [B, S·H·W], uniform in [0, 1), one draw per row and token, replaces `generator`: each row's
    sample then depends on its own draws only, not on the batch it runs in (evaluation sets).
    `use_cache=False` recomputes the whole decoder for every token (the simple reference that
    tests hold the cache equal to).
    """
    model.check_grid(grid)
    B, n = text.shape[0], grid[0] * grid[1] * grid[2]
    guided = sampling.guidance != 1.0
    if guided and sketch is not None:
        raise ValueError("classifier-free guidance steers towards a caption; a sketch condition has none")
    if guided:
        if unconditional is None:
            raise ValueError("sampling.guidance needs the unconditional text (generate(unconditional=...))")
        text = torch.cat([text, unconditional.to(text.device).expand(B, -1)])  # (2B, 77)
    if keep is None:
        keep = torch.zeros(grid, dtype=torch.bool)
    keep = keep.to(text.device).expand(B, *grid).reshape(B, n)
    if keep.any() and reference is None:
        raise ValueError("keep marks positions to copy but no reference codes were given")
    reference = (torch.zeros(B, n, dtype=torch.long, device=text.device) if reference is None
                 else reference.to(text.device).expand(B, *grid).reshape(B, n).long())
    copies = len(text) // B  # 2 under guidance: both halves read the same tokens
    codes = torch.zeros(copies * B, n, dtype=torch.long, device=text.device)
    condition, condition_keys = model.encode(text, None if sketch is None else sketch.to(text.device))
    positions = model.position_embedding(grid)
    cache = DecoderCache(model, condition, condition_keys, grid) if use_cache else None
    for t in range(n):
        if use_cache:
            token = model.bos.expand(len(codes), 1, -1) if t == 0 else model.code_embed(codes[:, t - 1: t])
            logits = decode_step(model, cache, token + positions[t], t)
        else:
            logits = model.decode(codes.view(-1, *grid), condition, condition_keys)[:, t]
        if guided:
            cond, uncond = logits.float().chunk(2)
            logits = uncond + sampling.guidance * (cond - uncond)
        sampled = sample_logits(logits, sampling, generator, None if noise is None else noise[:, t])
        codes[:, t] = torch.where(keep[:, t], reference[:, t], sampled).repeat(copies)
    return codes[:B].view(B, *grid)
