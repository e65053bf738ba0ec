"""The paper's metrics over media sets (evaluation/media.py) with the standard extractors
(evaluation/extractors.py): FID and blurred FID-k, IS, CLIPSIM, FVD, a VQ-GAN's PSNR, SSIM, LPIPS and
rFID, and a VQ-GAN-Seg's pixel accuracy and FWIoU. Video sets count every frame as an image for FID, IS and CLIPSIM (the paper's FID-img)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter
from tqdm import tqdm

from evaluation.extractors import I3D, Clip, Inception
from evaluation.media import Item, MediaSet, batches
from evaluation.statistics import (confusion_matrix, frechet_distance, gaussian, inception_score, psnr,
                                   segmentation_scores, ssim)
from preprocess.readers import model_to_uint8, uint8_to_model


def _frames(batch: list[Item]) -> np.ndarray:
    """Every frame of a batch as one uint8 [N, H, W, 3] stack."""
    return np.concatenate([item.frames for item in batch])


def blurred(images: np.ndarray, radius: float) -> np.ndarray:
    """FID-k (DALL·E's blurred FID): a Gaussian blur of `radius` pixels on both sets before the extractor."""
    if radius == 0:
        return images
    return np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius))) for x in images])


def inception_features(media: MediaSet, inception: Inception, radii: tuple[float, ...], batch: int) -> dict:
    """{radius: features [N frames, D]} in one pass over the set."""
    parts = {r: [] for r in radii}
    for chunk in tqdm(batches(iter(media), batch), desc=f"inception {media.source}", unit="batch", leave=False):
        frames = _frames(chunk)
        for r in radii:
            parts[r].append(inception.features(blurred(frames, r)))
    if not parts[radii[0]]:
        raise ValueError(f"{media.source}: no {media.modality} decoded (skipped: {media.skipped or 'none'})")
    return {r: np.concatenate(p) for r, p in parts.items()}


def fid(real: MediaSet, generated: MediaSet, inception: Inception, radii: tuple[float, ...] = (0,),
        batch: int = 50) -> dict:
    """{"fid": …, "fid-k": {k: …} for k > 0, "real_count", "generated_count"} (counts in frames)."""
    a, b = inception_features(real, inception, radii, batch), inception_features(generated, inception, radii, batch)
    scores = {r: frechet_distance(*gaussian(a[r]), *gaussian(b[r])) for r in radii}
    result = {"real_count": len(a[radii[0]]), "generated_count": len(b[radii[0]])}
    if 0 in scores:
        result["fid"] = scores[0]
    result["fid-k"] = {str(r): scores[r] for r in radii if r != 0}
    return result


def inception_score_of(generated: MediaSet, inception: Inception, splits: int = 10, batch: int = 50) -> dict:
    probabilities = [inception.probabilities(_frames(chunk)) for chunk in
                     tqdm(batches(iter(generated), batch), desc="inception score", unit="batch", leave=False)]
    mean, std = inception_score(np.concatenate(probabilities), splits)
    return {"is": mean, "is_std": std, "splits": splits, "generated_count": sum(len(p) for p in probabilities)}


def clipsim(generated: MediaSet, clip: Clip, batch: int = 50) -> dict:
    """Mean cosine similarity of CLIP's image and caption embeddings, per frame, averaged per item then
    over items (GODIVA's and NÜWA's CLIPSIM, not scaled by 100)."""
    per_item = []
    for chunk in tqdm(batches(iter(generated), batch), desc="clipsim", unit="batch", leave=False):
        missing = [item.key for item in chunk if not item.caption]
        if missing:
            raise ValueError(f"{generated.source}: CLIPSIM needs a caption for every item; {missing[0]} has none")
        images = clip.image_features(_frames(chunk))
        texts = clip.text_features([item.caption for item in chunk])
        owner = torch.repeat_interleave(torch.arange(len(chunk)), torch.tensor([len(i.frames) for i in chunk]))
        similarity = (images * texts[owner.to(images.device)]).sum(-1).double().cpu()
        per_item += [similarity[owner == i].mean().item() for i in range(len(chunk))]
    return {"clipsim": float(np.mean(per_item)), "generated_count": len(per_item)}


def fvd(real: MediaSet, generated: MediaSet, i3d: I3D, batch: int = 16) -> dict:
    """Fréchet distance of I3D features of whole clips (StyleGAN-V's protocol)."""
    def features(media: MediaSet) -> np.ndarray:
        parts = [i3d.features(np.stack([item.frames for item in chunk]))
                 for chunk in tqdm(batches(iter(media), batch), desc=f"i3d {media.source}", unit="batch", leave=False)]
        if not parts:
            raise ValueError(f"{media.source}: no video decoded (skipped: {media.skipped or 'none'})")
        return np.concatenate(parts)

    a, b = features(real), features(generated)
    return {"fvd": frechet_distance(*gaussian(a), *gaussian(b)), "real_count": len(a), "generated_count": len(b),
            "frames": int(real.frames)}


@torch.no_grad()
def segmentation_reconstruction(data: MediaSet, vqgan, batch: int = 16) -> dict:
    """A VQ-GAN-Seg on held-out label maps: pixel accuracy, frequency-weighted IoU and mean IoU of its
    reconstructions (the paper's Tab. 4)."""
    classes = vqgan.config.num_classes
    confusion, count = np.zeros((classes, classes), np.int64), 0
    for chunk in tqdm(batches(iter(data), batch), desc="reconstruct", unit="batch", leave=False):
        labels = torch.from_numpy(np.concatenate([item.frames for item in chunk]).astype(np.int64))  # [N, H, W]
        rebuilt = vqgan.decode_labels(vqgan.encode(labels)).cpu().numpy()
        confusion += confusion_matrix(labels.numpy(), rebuilt, classes)
        count += len(labels)
    if not count:
        raise ValueError(f"{data.source}: no label map decoded (skipped: {data.skipped or 'none'})")
    return {**segmentation_scores(confusion), "count": count}


@torch.no_grad()
def reconstruction(data: MediaSet, vqgan, lpips=None, inception: Inception | None = None, batch: int = 16) -> dict:
    """A VQ-GAN on held-out media: PSNR and SSIM (per frame, averaged), LPIPS (when weights are given) and
    rFID (FID of reconstructions against originals, when an Inception file is given). A VQ-GAN-Seg: see
    `segmentation_reconstruction`."""
    if vqgan.config.num_classes:
        return segmentation_reconstruction(data, vqgan, batch)
    device = next(vqgan.parameters()).device
    scores = {"psnr": [], "ssim": [], "lpips": []}
    real, rebuilt = [], []
    for chunk in tqdm(batches(iter(data), batch), desc="reconstruct", unit="batch", leave=False):
        frames = _frames(chunk)  # [N, H, W, 3]
        x = uint8_to_model(torch.from_numpy(frames).permute(0, 3, 1, 2)).to(device)
        y = vqgan.decode(vqgan.encode(x))
        out = model_to_uint8(y).permute(0, 2, 3, 1).cpu().numpy()
        scores["psnr"] += [psnr(a, b) for a, b in zip(frames, out)]
        scores["ssim"] += [ssim(a, b) for a, b in zip(frames, out)]
        if lpips is not None:
            scores["lpips"] += lpips.to(device)(x, uint8_to_model(torch.from_numpy(out).permute(0, 3, 1, 2)).to(device)).tolist()
        if inception is not None:
            real.append(inception.features(frames))
            rebuilt.append(inception.features(out))
    if not scores["psnr"]:
        raise ValueError(f"{data.source}: no {data.modality} decoded (skipped: {data.skipped or 'none'})")
    result = {key: float(np.mean(values)) for key, values in scores.items() if values}
    if inception is not None:
        result["rfid"] = frechet_distance(*gaussian(np.concatenate(real)), *gaussian(np.concatenate(rebuilt)))
    return {**result, "count": len(scores["psnr"])}
