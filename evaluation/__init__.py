"""Evaluation: the paper's metrics (FID, FID-k, IS, CLIPSIM, FVD) and a VQ-GAN's reconstruction metrics
(PSNR, SSIM, LPIPS, rFID), computed with the standard TorchScript feature extractors passed by path."""
