"""VQ-GAN: shapes, quantizer against brute force, straight-through gradients, taming import,
save/load, bad checkpoints, dead-code restart, a short training run, and the trainer end to end."""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from model.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss
from model.vqgan import VQGAN, VQGANConfig, VectorQuantizer, infer_taming_config
from preprocess.readers import ClipSampling
from pretrain.checkpoint import complete_tags, read_marker
from pretrain.optim import lr_multiplier
from pretrain.vqgan_trainer import (LossConfig, list_inputs, load_config, psnr, read_frames,
                                    restart_dead_codes, train, train_step)
from tools.media import encode_mp4
from tools.make_demo_data import caption, random_spec, render_frame, render_video

# 32 px → 8×8 codes; small enough for about 0.1 s per training step on one core
SMALL = dict(resolution=32, ch=16, ch_mult=(1, 2, 2), attn_levels=(2,), norm_groups=4, z_channels=16,
             embed_dim=16, codebook_size=128)


def small_model(seed: int = 0, **overrides) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(VQGANConfig.from_preset("tiny", **{**SMALL, **overrides})).eval()


def shapes(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """n demo images (one flat shape on a flat background) as float (n, 3, size, size) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    frames = np.stack([render_frame(random_spec(rng, None), 0.0, size) for _ in range(n)])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1


# ----------------------------------------------------------------------------- shapes and presets

def test_presets_have_the_paper_grids():
    assert VQGANConfig.from_preset("f16-12288").grid == (21, 21)
    assert VQGANConfig.from_preset("f16-12288").codebook_size == 12288
    assert VQGANConfig.from_preset("f8").grid == (32, 32)
    assert VQGANConfig.from_preset("tiny").grid == (8, 8)
    assert VQGANConfig.from_preset("tiny", codebook_size=64).codebook_size == 64
    with pytest.raises(ValueError, match="unknown VQ-GAN preset"):
        VQGANConfig.from_preset("f32")


def test_shapes_and_round_trip():
    model = small_model()
    images = shapes(3, seed=0)
    codes = model.encode(images)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    decoded = model.decode(codes)
    assert decoded.shape == (3, 3, 32, 32) and decoded.min() >= -1 and decoded.max() <= 1
    with torch.no_grad():
        reconstruction, vq_loss, forward_codes = model(images)
    torch.testing.assert_close(forward_codes, codes)
    torch.testing.assert_close(decoded, reconstruction.clamp(-1, 1))  # decode(encode(x)) is the forward pass
    assert model.encode(decoded).shape == codes.shape


def test_video_is_coded_frame_by_frame_in_batches():
    model = small_model()
    videos = shapes(6, seed=1).view(2, 3, 3, 32, 32)  # (B, T, 3, H, W)
    codes = model.encode_video(videos, batch_size=4)
    assert codes.shape == (2, 3, 8, 8)
    torch.testing.assert_close(codes[1, 2], model.encode(videos[1, 2:3])[0])
    torch.testing.assert_close(model.encode_video(videos, batch_size=1), codes)
    frames = model.decode_video(codes, batch_size=5)
    assert frames.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(frames[0, 1], model.decode(codes[0, 1:2])[0])


def test_circular_padding_makes_codes_follow_whole_code_shifts():
    """With padding_mode="circular" the encoder commutes with rolling the image by whole codes (4 px
    here) and so does the decoder with rolling the codes; zero padding (taming's) does not."""
    images = shapes(2, seed=3)
    for mode, equivariant in (("circular", True), ("zeros", False)):
        model = small_model(padding_mode=mode)
        with torch.no_grad():
            latents = model.encode_latents(images)
            rolled = model.encode_latents(images.roll((4, -8), dims=(2, 3)))
            codes = model.encode(images)
            decoded_rolled = model.decode(codes.roll((1, -2), dims=(1, 2)))
        assert torch.allclose(rolled, latents.roll((1, -2), dims=(2, 3)), atol=1e-5) == equivariant
        assert torch.allclose(decoded_rolled, model.decode(codes).roll((4, -8), dims=(2, 3)), atol=1e-5) == equivariant
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert small_model(padding_mode="circular").encode(flat).unique().numel() == 1
    with pytest.raises(ValueError, match="padding_mode"):
        VQGANConfig.from_preset("tiny", padding_mode="mirror")


def test_convolutional_vqgan_has_no_attention_and_keeps_taming_layout(tmp_path):
    """mid_attention=False with no attn_levels: no self-attention anywhere, and the taming layout
    carries the choice (no encoder.mid.attn_1 keys), so the model round-trips through it."""
    model = small_model(mid_attention=False, attn_levels=())
    assert not any("attn" in key for key in model.state_dict())
    torch.save(model.state_dict(), tmp_path / "conv.pt")
    back = VQGAN.from_taming(tmp_path / "conv.pt", resolution=32, norm_groups=4).eval()
    assert not back.config.mid_attention and back.config.attn_levels == ()
    images = shapes(2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(back(images)[0], model(images)[0])


def encoder_change(model: VQGAN, where: tuple, value: float) -> torch.Tensor:
    """|change| of the encoder output, (C, 32, 32), when the pixels `where` of a fixed random
    256-px image are set to `value`: how far a code's features reach."""
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    changed = image.clone()
    changed[(..., *where)] = value
    with torch.no_grad():
        return (model.encoder(image) - model.encoder(changed)).abs()[0]


def test_pixel_norm_encoder_codes_only_see_nearby_pixels():
    """encoder_norm="pixel" with no attention: changing one corner of a 256-px image leaves the
    encoder output at the opposite corner (over 64 px away) unchanged; GroupNorm's map-wide
    statistics change it everywhere. The decoder keeps GroupNorm either way."""
    far = {}
    for norm in ("group", "pixel"):
        model = small_model(resolution=256, mid_attention=False, attn_levels=(), encoder_norm=norm)
        far[norm] = encoder_change(model, (slice(128, None), slice(128, None)), -1)[..., :8, :8].max().item()
        assert isinstance(model.decoder.mid.block_1.norm1, torch.nn.GroupNorm)
    assert far["pixel"] < 1e-4 < 0.05 < far["group"]
    with pytest.raises(ValueError, match="encoder_norm"):
        VQGANConfig.from_preset("tiny", encoder_norm="batch")


def test_encoder_without_blocks_sees_about_one_code_around():
    """num_res_blocks 0 and no encoder middle block: one changed pixel moves the encoder output of
    codes at most 2 codes away (with the blocks: 8 or more); the decoder keeps its blocks."""
    reach = {}
    for local in (False, True):
        model = small_model(resolution=256, ch_mult=(1, 1, 1, 1), attn_levels=(), mid_attention=False,
                            encoder_norm="pixel", **(dict(num_res_blocks=0, encoder_middle=False) if local else {}))
        moved = encoder_change(model, (128, 128), -2).amax(0) > 0  # (32, 32); the pixel is in code (16, 16)
        reach[local] = (moved.nonzero() - 16).abs().max().item()
        assert hasattr(model.decoder.mid, "block_1")  # the decoder keeps its middle block
    assert reach[True] <= 2 < 8 <= reach[False]
    with pytest.raises(ValueError, match="num_res_blocks 0"):
        VQGANConfig.from_preset("tiny", num_res_blocks=0)


def test_encode_rejects_bad_images():
    model = small_model()
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\]"):
        model.encode(torch.full((1, 3, 32, 32), 255.0))
    with pytest.raises(ValueError, match="not a multiple of the downsampling 4"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 128\)"):
        model.decode(torch.full((1, 8, 8), 128))


# ----------------------------------------------------------------------------- the quantizer

def test_quantizer_equals_brute_force_nearest_code():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=50, dim=6, beta=0.25).double()
    quantizer.embedding.weight.data.normal_()
    z = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    z_q, loss, codes = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)  # (N, D)
    brute = ((flat[:, None, :] - quantizer.embedding.weight[None]) ** 2).sum(-1).argmin(1)  # (N,)
    torch.testing.assert_close(codes.flatten(), brute)
    expected_z_q = quantizer.embedding.weight[brute].view(3, 5, 7, 6).permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, expected_z_q)
    torch.testing.assert_close(loss, 1.25 * ((expected_z_q - z) ** 2).mean())  # codebook + beta·commitment
    torch.testing.assert_close(quantizer.nearest(flat, chunk=4), brute)  # chunking changes nothing


def test_straight_through_gradient_reaches_the_encoder():
    model = small_model()
    model.train()
    reconstruction, vq_loss, _ = model(shapes(2, seed=2))
    reconstruction.abs().mean().backward()  # the pixel loss alone: its only way back is straight through
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None or model.quantize.embedding.weight.grad.abs().sum() == 0

    quantizer = VectorQuantizer(16, 4, beta=0.25)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    weights = torch.randn(2, 4, 3, 3)
    z_q, _, _ = quantizer(z)
    (z_q * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # identity gradient through the quantizer


def test_codes_fit_the_codebook_and_uint16():
    model = small_model(codebook_size=65536, embed_dim=4)
    model.quantize.embedding.weight.data.normal_()
    codes = model.encode(shapes(2, seed=3))
    assert 0 <= int(codes.min()) and int(codes.max()) < 65536
    stored = codes.numpy().astype(np.uint16)  # what the shards hold
    np.testing.assert_array_equal(stored.astype(np.int64), codes.numpy())
    torch.testing.assert_close(model.decode(torch.from_numpy(stored)), model.decode(codes))
    with pytest.raises(ValueError, match="codes fit uint16"):
        VQGANConfig.from_preset("tiny", codebook_size=65537)


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=16, dim=4, beta=0.25).train()
    quantizer.embedding.weight.data[1:] = 100.0  # collapsed: every vector picks code 0
    quantizer.embedding.weight.data[0] = 0.0
    z = torch.randn(4, 4, 6, 6)
    _, _, codes = quantizer(z)
    assert codes.unique().tolist() == [0] and quantizer.usage[0] == 144 and quantizer.usage[1:].sum() == 0
    latents = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert quantizer.restart_dead_codes(latents, min_count=1) == 15
    assert quantizer.usage.sum() == 0  # counting starts afresh
    nearest_latent = torch.cdist(quantizer.embedding.weight.data[1:], latents).min(1).values
    assert nearest_latent.max() < 0.1  # each revived code sits on an encoder output
    _, _, codes = quantizer(z)
    assert codes.unique().numel() >= 12


def test_restarts_go_where_the_codebook_is_worst():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=8, dim=2, beta=0.25).train()
    common = 0.01 * torch.randn(990, 2)  # 99% of the latents: one cluster, already served by code 0
    rare = torch.tensor([[5.0, 0.0]]) + 0.01 * torch.randn(10, 2)  # 1%: far from every live code
    quantizer.embedding.weight.data[:] = 50.0
    quantizer.embedding.weight.data[0] = 0.0
    quantizer.usage[0] = 1000
    assert quantizer.restart_dead_codes(torch.cat([common, rare]), min_count=1) == 7
    revived = quantizer.embedding.weight.data[1:]
    # a uniform pick would land about 7 × 1% = 0.07 codes on the rare cluster; the error-weighted
    # pick puts nearly all of them there (each rare latent weighs 25 / 1e-4 times a common one)
    assert ((revived - torch.tensor([5.0, 0.0])).norm(dim=1) < 0.1).sum() >= 6


# ----------------------------------------------------------------------------- taming import

def taming_shapes(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, embed_dim, n_embed,
                  in_channels=3, out_ch=3) -> dict[str, tuple[int, ...]]:
    """Key → shape of taming-transformers' VQModel, written from its Encoder/Decoder constructors."""
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    def mid(prefix, c):
        resnet(f"{prefix}.mid.block_1", c, c), attn(f"{prefix}.mid.attn_1", c), resnet(f"{prefix}.mid.block_2", c, c)

    conv("encoder.conv_in", in_channels, ch, 3)
    curr, in_mult = resolution, (1,) + tuple(ch_mult)
    for i, mult in enumerate(ch_mult):
        block_in = ch * in_mult[i]
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * mult)
            block_in = ch * mult
            if curr in attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != len(ch_mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            curr //= 2
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in), conv("encoder.conv_out", block_in, z_channels, 3)
    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", z_channels, block_in, 3)
    mid("decoder", block_in)
    for i in reversed(range(len(ch_mult))):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
            if curr in attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            curr *= 2
    norm("decoder.norm_out", block_in), conv("decoder.conv_out", block_in, out_ch, 3)
    shapes["quantize.embedding.weight"] = (n_embed, embed_dim)
    conv("quant_conv", z_channels, embed_dim, 1), conv("post_quant_conv", embed_dim, z_channels, 1)
    return shapes


TAMING_SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), resolution=32,
                    z_channels=16, embed_dim=8, n_embed=96)


def write_taming_checkpoint(path, **architecture) -> dict[str, torch.Tensor]:
    """A Lightning-style taming checkpoint with random weights, the loss' weights and pickled metadata."""
    generator = torch.Generator().manual_seed(0)
    state = {k: 0.1 * torch.randn(shape, generator=generator) for k, shape in taming_shapes(**architecture).items()}
    checkpoint = {
        "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8",
        "state_dict": {**state, "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4),
                       "loss.perceptual_loss.lin0.model.1.weight": torch.zeros(1, 64, 1, 1)},
        "callbacks": {argparse.Namespace: {"best_model_score": torch.tensor(0.5)}},  # a class as key, as PL 1.x
        "hyper_parameters": argparse.Namespace(embed_dim=architecture["embed_dim"]),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6}]}],
    }
    torch.save(checkpoint, path)
    return state


def test_taming_checkpoint_round_trip(tmp_path):
    state = write_taming_checkpoint(tmp_path / "last.ckpt", **TAMING_SMALL)
    assert VQGAN.from_taming(tmp_path / "last.ckpt").config.resolution == 128  # f4: 32×32 codes by default
    model = VQGAN.from_taming(tmp_path / "last.ckpt", resolution=32).eval()
    config = model.config
    assert (config.ch, config.ch_mult, config.num_res_blocks, config.attn_levels) == (32, (1, 2, 2), 2, (2,))
    assert (config.z_channels, config.embed_dim, config.codebook_size) == (16, 8, 96)
    assert set(model.state_dict()) == set(state)  # our layout is taming's, key for key
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)

    explicit = VQGAN.from_taming(tmp_path / "last.ckpt", config=config).eval()
    model.save_pretrained(tmp_path / "ours")
    reloaded = VQGAN.from_pretrained(tmp_path / "ours").eval()
    torch.save(reloaded.state_dict(), tmp_path / "bare.pt")  # our state dict back as a bare taming state dict
    back = VQGAN.from_taming(tmp_path / "bare.pt", resolution=32).eval()
    images = shapes(2, seed=4)
    with torch.no_grad():
        reference = model(images)[0]
        for other in (explicit, reloaded, back):
            torch.testing.assert_close(other(images)[0], reference)
            torch.testing.assert_close(other.encode(images), model.encode(images))
    assert model.fingerprint() == reloaded.fingerprint() == back.fingerprint()


def test_public_f16_imagenet_layout():
    """taming's vqgan_imagenet_f16_1024/16384 (ch 128, ch_mult [1,1,2,2,4], 2 blocks, attention at
    16 px of 256, z 256, codes of 256): read off the shapes, it is our f16 preset, key for key."""
    layout = taming_shapes(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256,
                           z_channels=256, embed_dim=256, n_embed=16384)
    with torch.device("meta"):
        config = infer_taming_config({k: torch.empty(shape) for k, shape in layout.items()}, "f16")
        model = VQGAN(config)
    assert config == VQGANConfig.from_preset("f16-12288", codebook_size=16384)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout


def test_taming_wrong_architecture_names_keys(tmp_path):
    write_taming_checkpoint(tmp_path / "last.ckpt", **TAMING_SMALL)
    wrong = VQGANConfig(resolution=32, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_levels=(2,), z_channels=16,
                        embed_dim=4, codebook_size=96, norm_groups=8)
    with pytest.raises(ValueError, match=r"missing keys: decoder\.up\.3\..*unexpected keys: decoder\.up\.0\.block\.2\..*"
                                         r"shape-mismatched keys: post_quant_conv\.weight: checkpoint \(16, 8, 1, 1\)"):
        VQGAN.from_taming(tmp_path / "last.ckpt", config=wrong)
    torch.save({"state_dict": {"model.diffusion.weight": torch.zeros(3)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a taming VQModel checkpoint: missing encoder.conv_in.weight"):
        VQGAN.from_taming(tmp_path / "other.ckpt")


def test_truncated_files_say_so(tmp_path):
    write_taming_checkpoint(tmp_path / "last.ckpt", **TAMING_SMALL)
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        VQGAN.from_taming(tmp_path / "cut.ckpt")

    small_model().save_pretrained(tmp_path / "ours")
    weights = tmp_path / "ours" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        VQGAN.from_pretrained(tmp_path / "ours")


def test_pickled_code_is_never_run(tmp_path):
    class Exploit:
        def __reduce__(self):
            import os
            return os.system, ("echo should-not-run",)

    torch.save({"state_dict": {}, "evil": Exploit()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="cannot be loaded safely.*posix.system"):
        VQGAN.from_taming(tmp_path / "evil.ckpt")


# ----------------------------------------------------------------------------- our format

def test_save_and_load_pretrained(tmp_path):
    model = small_model(seed=5)
    model.save_pretrained(tmp_path / "vq")
    assert sorted(p.name for p in (tmp_path / "vq").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "vq" / "config.json").read_text())["codebook_size"] == 128
    loaded = VQGAN.from_pretrained(tmp_path / "vq")
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert loaded.fingerprint() == model.fingerprint() and len(model.fingerprint()) == 16
    half = small_model(seed=5).to(torch.bfloat16)
    assert half.fingerprint() != model.fingerprint()  # bf16 rounds the weights: other codes, other identity
    rounded = half.fingerprint()
    assert half.float().fingerprint() == rounded  # an exact upcast keeps it
    loaded.quantize.embedding.weight.data[0, 0] += 1e-3
    assert loaded.fingerprint() != model.fingerprint()


def test_wrong_architecture_in_our_format(tmp_path):
    small_model().save_pretrained(tmp_path / "vq")
    config = json.loads((tmp_path / "vq" / "config.json").read_text())
    (tmp_path / "vq" / "config.json").write_text(json.dumps({**config, "num_res_blocks": 2}))
    with pytest.raises(ValueError, match=r"does not match the VQGAN architecture; missing keys: decoder\.up\.0\.block\.2"):
        VQGAN.from_pretrained(tmp_path / "vq")
    (tmp_path / "vq" / "config.json").write_text(json.dumps({**config, "codebok_size": 3}))
    with pytest.raises(ValueError, match="unknown config key.*codebok_size"):
        VQGAN.from_pretrained(tmp_path / "vq")


# ----------------------------------------------------------------------------- GAN pieces

def test_hinge_loss_and_adaptive_weight():
    torch.testing.assert_close(hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-3.0, 1.0])),
                               torch.tensor(0.5 * (0.5 + 1.0)))
    last = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(4)
    rec_loss, g_loss = (last @ x).pow(2).sum(), -(last @ x).sum() * 0.1
    rec_grad, g_grad = 2 * (last @ x)[:, None] * x[None], -0.1 * x.expand(3, 4)  # analytic gradients
    expected = rec_grad.norm() / (g_grad.norm() + 1e-4)
    torch.testing.assert_close(adaptive_weight(rec_loss, g_loss, last), expected.detach())
    assert PatchDiscriminator(3, 8, n_layers=2)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)


# ----------------------------------------------------------------------------- learning

def zoomed_shapes(n: int, seed: int) -> torch.Tensor:
    """Demo images rendered at 64 px and cropped to the 32 px around the shape, so that the shape,
    not the flat background, carries most of the error a reconstruction can make."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        spec = random_spec(rng, None)
        frame = render_frame(spec, 0.0, 64)
        left, top = (min(max(round(c * 64) - 16, 0), 32) for c in spec.start)
        crops.append(frame[top:top + 32, left:left + 32])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_short_training_beats_the_mean_colour_baselines(capsys):
    """400 steps of the trainer's own step (L1 + VQ loss, dead-code restarts) on 16 demo shapes.

    Baselines: every pixel of an image set to that image's mean colour, and to the mean colour of
    all images. The numbers are printed for the record.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is as fast and leaves a core to others
    try:
        model = small_model(seed=0).train()
        disc = PatchDiscriminator(3, 16, n_layers=2)
        opt_g = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.9))
        images = zoomed_shapes(16, seed=6)
        loss_cfg = LossConfig(perceptual_weight=0.0, disc_start=10**9)
        generator = torch.Generator().manual_seed(0)
        started, usage = time.time(), []
        for step in range(400):
            batch = images[torch.randint(len(images), (8,), generator=generator)]
            metrics = train_step(model, disc, None, opt_g, opt_d, batch, step, loss_cfg, grad_clip=1.0)
            if (step + 1) % 50 == 0:
                usage.append(restart_dead_codes(model, batch, min_count=1)[0])
        seconds = time.time() - started
    finally:
        torch.set_num_threads(threads)
    model.eval()
    codes = model.encode(images)
    achieved = psnr(images, model.decode(codes))
    per_image = psnr(images, images.mean(dim=(2, 3), keepdim=True).expand_as(images))
    dataset = psnr(images, images.mean(dim=(0, 2, 3), keepdim=True).expand_as(images))
    with capsys.disabled():
        print(f"\n[vqgan training] 400 steps in {seconds:.1f}s: PSNR {achieved:.2f} dB; mean-colour baselines: "
              f"per image {per_image:.2f} dB, whole set {dataset:.2f} dB; codes used on these images "
              f"{codes.unique().numel()}/128; usage per 50-step window {[f'{u:.0%}' for u in usage]}")
    assert math.isfinite(metrics["loss"])
    assert achieved > per_image + 3.0 and achieved > dataset + 8.0


def test_train_vqgan_end_to_end_and_resume(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not an image")  # skipped with a warning, not fatal
    rows = [{"path": "broken.jpg", "caption": "broken"}]
    for i, image in enumerate(shapes(12, seed=7)):
        Image.fromarray(((image.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(folder / f"{i:02d}.png")
        rows.append({"path": f"{i:02d}.png", "caption": "a shape"})
    (folder / "index.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    overrides = ["--data.paths", f"[{folder}]", "--data.num_workers", "0", "--data.shuffle_buffer", "4",
                 "--trainer.batch_size", "2", "--trainer.checkpoint_every", "2", "--trainer.restart_every", "2",
                 "--trainer.output_dir", str(tmp_path / "run"), "--loss.perceptual_weight", "0",
                 "--loss.disc_start", "1", "--loss.disc_layers", "2", "--trainer.log_every", "1",
                 "--trainer.sample_every", "2", "--optim.lr", "1e-3", "--optim.decay", "cosine",
                 "--optim.min_lr_ratio", "0.1"]
    for key, value in SMALL.items():
        overrides += [f"--model.{key}", json.dumps(list(value) if isinstance(value, tuple) else value)]
    summary = train(load_config(None, overrides + ["--trainer.steps", "2"]), resume="auto")  # nothing yet: fresh
    assert summary["steps"] == 2 and math.isfinite(summary["psnr"])
    assert "skipping broken.jpg" in caplog.text and "corrupt_image" in caplog.text
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [t.name for t in complete_tags(checkpoints)] == ["step-00000002"]
    assert sorted(p.name for p in (checkpoints / "step-00000002").iterdir()) == [
        "discriminator.safetensors", "train_state.pt", "trainer_state.json", "vqgan"]

    train(load_config(None, overrides + ["--trainer.steps", "4"]), resume="auto")
    assert read_marker(checkpoints / "step-00000004")["state"] == {"step": 4}
    state = torch.load(checkpoints / "step-00000004" / "train_state.pt", weights_only=True)
    assert all(s["step"] == 4 for s in state["opt_g"]["state"].values())  # Adam continued from step 2
    # cosine decay: the last step (index 3 of 4) runs at min_lr_ratio × lr, the discriminator's too
    assert [state[k]["param_groups"][0]["lr"] for k in ("opt_g", "opt_d")] == pytest.approx([1e-4, 1e-5])
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002", "step-00000004"]
    final = VQGAN.from_pretrained(tmp_path / "run" / "final")
    assert final.fingerprint() == VQGAN.from_pretrained(checkpoints / "step-00000004" / "vqgan").fingerprint()
    assert final.config == VQGANConfig.from_preset("tiny", **SMALL)
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and all(math.isfinite(r["psnr"]) for r in logged)

    with pytest.raises(ValueError, match="refusing to resume .*ch: checkpoint 16 vs config 32"):
        train(load_config(None, overrides + ["--trainer.steps", "6", "--model.ch", "32"]), resume="auto")


def test_video_frames_become_training_images(tmp_path):
    spec = random_spec(np.random.default_rng(0), 0.3125)
    frames = render_video(spec, seconds=2.0, fps=5, image_size=32)  # (10, 32, 32, 3)
    with wds.TarWriter(str(tmp_path / "videos.tar")) as writer:
        writer.write({"__key__": "000000000", "mp4": encode_mp4(frames, fps=5), "txt": caption(spec)})
        writer.write({"__key__": "000000001", "mp4": b"garbage", "txt": "broken"})
    units = list_inputs([str(tmp_path)], "video", rows_per_unit=256)
    out = list(read_frames(*units[0], resolution=32, sampling=ClipSampling(num_frames=4, fps=2.5)))
    decoded, skips = out[:4], out[4:]
    assert [f.shape for f in decoded] == [(3, 32, 32)] * 4 and [s.reason for s in skips] == ["corrupt_video"]
    for j, frame in enumerate(decoded):  # clip frame j is the video frame at j / 2.5 s, i.e. index 2j at 5 fps
        error = np.abs(frame.transpose(1, 2, 0).astype(int) - frames[2 * j].astype(int)).mean()
        assert error < 8, (j, error)  # H.264 is lossy; a wrong frame would miss the moving shape by far more


def test_lr_decay_is_a_function_of_the_step():
    config = load_config(None, ["--trainer.steps", "101", "--optim.decay", "cosine", "--optim.min_lr_ratio", "0.2"])
    assert [lr_multiplier(config.optim, 101)(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.6, 0.2])
    assert lr_multiplier(load_config(None, ["--trainer.steps", "101"]).optim, 101)(100) == 1.0  # taming's constant


def test_config_rejects_unknown_keys_and_reads_presets(tmp_path):
    config = load_config(None, ["--preset", "f8", "--model.codebook_size", "8192"])
    assert config.model == VQGANConfig.from_preset("f8", codebook_size=8192)
    (tmp_path / "c.yaml").write_text("preset: tiny\ntrainer:\n  stpes: 3\n")
    with pytest.raises(ValueError, match="unknown config key.*trainer.stpes"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("pixel_loss, reduce", [("l1", lambda e: e.abs().mean()), ("l2", lambda e: e.square().mean())])
def test_pixel_loss_choice(pixel_loss, reduce):
    model = small_model(seed=0).train()
    disc = PatchDiscriminator(3, 16, n_layers=2)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (model, disc))
    images = zoomed_shapes(2, seed=1)
    with torch.no_grad():
        rec, vq_loss, _ = model(images)
    expected = (reduce(images - rec) + vq_loss).item()
    loss_cfg = LossConfig(perceptual_weight=0.0, disc_start=10**9, pixel_loss=pixel_loss)
    metrics = train_step(model, disc, None, opt_g, opt_d, images, 0, loss_cfg)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
