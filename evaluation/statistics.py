"""The numbers behind the metrics, on features and pixels: Fréchet distance, Inception Score, PSNR, SSIM, and
the segmentation scores of a VQ-GAN-Seg (pixel accuracy, frequency-weighted and mean IoU)."""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] → (mean [D], covariance [D, D]) in float64 (unbiased, as the reference FID code)."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples per set, got {len(features)}")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) for two Gaussians.

    tr (Σ1 Σ2)^½ is the sum of the square roots of the eigenvalues of Σ1^½ Σ2 Σ1^½, a symmetric positive
    semi-definite matrix with the same spectrum; symmetric eigensolvers stay real and stable where a
    general matrix square root of a rank-deficient product (fewer samples than dimensions) does not."""
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def inception_score(probabilities: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """probabilities [N, classes] → (mean, std) over `splits` equal parts of exp E_x KL(p(y|x) ‖ p(y))."""
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) < splits:
        raise ValueError(f"an Inception Score over {splits} splits needs at least {splits} samples, got {len(p)}")
    scores = []
    for part in np.array_split(p, splits):
        kl = part * (np.log(part + 1e-30) - np.log(part.mean(0, keepdims=True) + 1e-30))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """uint8 images [..., H, W, 3] → PSNR in dB over all their pixels."""
    return float(peak_signal_noise_ratio(reference, test, data_range=255))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """uint8 [H, W, 3] images → SSIM (scikit-image: 7×7 uniform window, over colour channels)."""
    return float(structural_similarity(reference, test, channel_axis=-1, data_range=255))


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Class-id arrays of one shape → int64 [classes, classes] counts, rows the true class."""
    pairs = truth.astype(np.int64).ravel() * classes + predicted.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def segmentation_scores(confusion: np.ndarray) -> dict[str, float]:
    """Pixel accuracy; IoU per class = TP / (TP + FP + FN); frequency-weighted IoU weights each class by its
    share of the true pixels (the paper's FWIoU); mean IoU averages the classes present in either map."""
    confusion = confusion.astype(np.float64)
    tp, truth, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    union = truth + predicted - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    total = confusion.sum()
    return {"pixel_accuracy": float(tp.sum() / total), "fwiou": float((truth / total * iou).sum()),
            "miou": float(iou[present].mean())}
