"""The analytic FLOP count behind MFU, against torch's FlopCounterMode on real forward + backward passes."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from kernels import nearby_mask
from model.config import NuwaConfig
from model.flops import forward_flops, peak_tflops, training_flops, window_pairs
from model.nuwa import Nuwa

MID = dict(width=256, heads=4, encoder_layers=2, decoder_layers=3, frames=4, grid_height=8, grid_width=8,
           codebook_size=512)


@pytest.mark.parametrize("overrides, grid, sketch", [({}, (4, 8, 8), False), ({}, (1, 8, 8), False),
                                                     (MID, (4, 8, 8), False), ({}, (4, 8, 8), True)],
                         ids=["tiny-video", "tiny-image", "mid-video", "tiny-s2v"])
def test_count_matches_flop_counter_within_5_percent(overrides, grid, sketch):
    """The dense reference computes every query-key pair; SDPA's math path makes its products visible
    to the counter (CPU's fused SDPA kernels are not counted)."""
    config = NuwaConfig.from_preset("tiny", attention_backend="reference", sketch_codebook_size=64, **overrides)
    torch.manual_seed(0)
    model = Nuwa(config)
    text = torch.randint(1, config.text_vocab_size, (2, config.text_length))
    codes = torch.randint(0, config.codebook_size, (2, *grid))
    condition = torch.randint(0, 64, (2, *grid)) if sketch else None
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(text, codes, condition)[1].backward()
    analytic = 2 * 3 * forward_flops(config, grid, dense_attention=True, sketch=sketch)
    assert analytic == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_window_count_is_the_visible_pairs():
    config = NuwaConfig.from_preset("tiny", video_extent=(3, 5, 5))
    grid = (4, 8, 8)
    visible = int(nearby_mask(grid, grid, config.video_extent, causal=True).sum())
    assert window_pairs(grid, grid, config.video_extent, True) == visible
    dense, window = forward_flops(config, grid, dense_attention=True), forward_flops(config, grid)
    per_pair = 4 * config.width * config.decoder_layers
    assert dense - window == per_pair * (256 * 257 - (visible + 256))  # only the decoder's self-attention differs
    assert training_flops(config, grid) == 3 * window


def test_peak_table_knows_the_common_gpus():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("Some Future GPU") is None
