"""LPIPS: our module against a few lines of functional PyTorch, the weight-file layouts it reads,
and the shipped shift-tolerant weights when stlpips-pytorch is installed."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import lpips as lpips_module
from model.lpips import LPIPS, VGG16_STAGES, default_weights, load_lpips
from tools.make_demo_data import random_spec, render_frame


def random_state(shift_tolerant: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in lpips' own layout (what the weight files hold), incl. the constant buffers."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: 0.1 * torch.randn(v.shape, generator=generator) for k, v in LPIPS(shift_tolerant).state_dict().items()}
    for key in state:
        if key.endswith(".filt"):
            state[key] = LPIPS(shift_tolerant).state_dict()[key]
        if key.startswith("lin"):
            state[key] = state[key].abs()  # lpips' heads are non-negative
    state["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    state["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    return state


def reference_lpips(state: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, shift_tolerant: bool):
    """LPIPS written out with functional ops, from the weights alone."""
    def trunk(x):
        features, index = [], 0
        for stage, widths in enumerate(VGG16_STAGES):
            if stage:
                if shift_tolerant:  # max-pool stride 1, then BlurPool: reflect pad 2, binomial blur, stride 2
                    x = F.max_pool2d(x, 2, stride=1)
                    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
                    blur = torch.tensor([1.0, 2.0, 1.0])
                    kernel = (blur[:, None] * blur[None] / 16).expand(x.shape[1], 1, 3, 3)
                    x = F.conv2d(x, kernel, stride=2, groups=x.shape[1])
                    index += 2
                else:
                    x = F.max_pool2d(x, 2)
                    index += 1
            for _ in widths:
                prefix = f"net.slice{stage + 1}.{index}"
                x = F.relu(F.conv2d(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"], padding=1))
                index += 2
            features.append(x)
        return features

    scale = lambda x: (x - state["scaling_layer.shift"]) / state["scaling_layer.scale"]  # noqa: E731
    total = 0
    for i, (fa, fb) in enumerate(zip(trunk(scale(a)), trunk(scale(b)))):
        fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((fa - fb) ** 2, state[f"lin{i}.model.1.weight"]).mean(dim=(2, 3))
    return total.flatten()


@pytest.mark.parametrize("shift_tolerant", [True, False])
def test_lpips_equals_functional_reference_forward_and_backward(tmp_path, shift_tolerant):
    state = random_state(shift_tolerant)
    torch.save(state, tmp_path / "weights.pth")
    model = LPIPS.from_files(tmp_path / "weights.pth")
    assert any(isinstance(m, lpips_module.BlurPool) for m in model.modules()) == shift_tolerant
    torch.manual_seed(0)
    a = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    b = torch.rand(2, 3, 32, 32) * 2 - 1
    a_ref = a.detach().clone().requires_grad_()
    ours, reference = model(a, b), reference_lpips(state, a_ref, b, shift_tolerant)
    torch.testing.assert_close(ours, reference)
    ours.sum().backward()
    reference.sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad)
    assert all(p.grad is None for p in model.parameters())  # a frozen metric
    model.train()
    assert not model.training  # dropout in the heads stays off
    torch.testing.assert_close(model(a, a), torch.zeros(2))


def test_standard_lpips_from_torchvision_trunk_and_lpips_heads(tmp_path):
    state = random_state(shift_tolerant=False)
    trunk = {f"features.{k.split('.', 2)[2]}": v for k, v in state.items() if k.startswith("net.")}
    trunk["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's vgg16 file has it; unused
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    torch.save(trunk, tmp_path / "vgg16-397923af.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    torch.save({"state_dict": {f"loss.perceptual_loss.{k}": v for k, v in state.items()}
                | {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "taming.ckpt")
    direct = LPIPS.from_files(tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth")
    from_taming = LPIPS.from_files(tmp_path / "taming.ckpt")
    a, b = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    expected = reference_lpips(state, a, b, shift_tolerant=False)
    torch.testing.assert_close(direct(a, b), expected)
    torch.testing.assert_close(from_taming(a, b), expected)
    with pytest.raises(ValueError, match=r"missing keys: lin0\.model\.1\.weight"):
        LPIPS.from_files(tmp_path / "vgg16-397923af.pth")


def test_without_weights_the_loss_is_off_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(lpips_module.importlib.util, "find_spec", lambda name: None)
    with caplog.at_level(logging.INFO, logger="model.lpips"):
        assert load_lpips("auto") is None
        assert load_lpips("none") is None
    assert len(caplog.records) == 2
    assert "pip install stlpips-pytorch" in caplog.records[0].message


@pytest.mark.skipif(not default_weights(), reason="stlpips-pytorch is not installed")
def test_shipped_shift_tolerant_weights():
    model = load_lpips("auto")
    assert isinstance(model.net.slice2[1], lpips_module.BlurPool)
    torch.manual_seed(0)
    frame = render_frame(random_spec(np.random.default_rng(0), None), 0.0, 64)  # a demo shape, (64, 64, 3)
    image = torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    small = (image + 0.05 * torch.randn_like(image)).clamp(-1, 1)
    large = (image + 0.5 * torch.randn_like(image)).clamp(-1, 1)
    d_small, d_large, d_same = model(image, small), model(image, large), model(image, image)
    assert d_same.item() == 0.0 and 0 < d_small.item() < d_large.item()
    shifted = torch.roll(image, shifts=1, dims=3)  # shift tolerance: a 1-pixel shift costs less than mild noise
    assert model(image, shifted).item() < d_small.item()
