"""NÜWA model code: the encoder-decoder, its configs, the VQ-GAN, sampling."""
from model.config import NuwaConfig
from model.nuwa import Nuwa
from model.vqgan import VQGAN, VQGANConfig

__all__ = ["Nuwa", "NuwaConfig", "VQGAN", "VQGANConfig"]
