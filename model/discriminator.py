"""The VQ-GAN's adversary: a PatchGAN discriminator, the hinge loss and the adaptive weight.

Paper Eq. 5 (from VQ-GAN, Esser et al. 2021): L = L_rec + L_perceptual + λ·L_GAN, with
λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ) measured on the decoder's last layer G_L, so that
the adversarial gradient never drowns the reconstruction gradient whatever the loss scales.
The discriminator mirrors taming-transformers' `NLayerDiscriminator` (layer for layer, `main.N`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    """(B, 3, H, W) → one real/fake logit per overlapping patch (B, 1, h, w) (pix2pix's PatchGAN).

    n_layers stride-2 4×4 convs (width doubling up to 8×) then two stride-1 convs; each of the
    middle convs is followed by BatchNorm and LeakyReLU(0.2). Three layers see 70×70 patches.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN init, as taming
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: push real logits above +1 and fake logits below -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """λ = ‖∇ rec_loss‖ / (‖∇ g_loss‖ + 1e-4), gradients taken w.r.t. the decoder's last weight, detached."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
