"""Peer of `sam_data::augment_pair` for docs/benchmarks/data.md: the same operations with the same
parameters (sam-data's default AugmentConfig, every op at p = 0.5) as an albumentations 2.0.8
pipeline, run in one process as it is usually run, in memory, on 2048x2048 16-bit images
(as float32 in [0, 1]) with int32 masks.

Usage: python albumentations_augment.py SOURCE_DIR N_WITH_ELASTIC N_WITHOUT_ELASTIC
(SOURCE_DIR holds images/*.tif and labels/*.tif, e.g. written by the bench_data example).
"""
import sys
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import tifffile

P = 0.5


def elastic_alpha(shape, sigma, magnitude, seed=0):
    """alpha that gives albumentations' field the same per-axis std (pixels) as sam-data's."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal(shape, dtype=np.float32)
    f /= np.abs(f).max()
    f = f.reshape(-1, shape[-1])
    cv2.GaussianBlur(f, (0, 0), sigma, dst=f, borderType=cv2.BORDER_REPLICATE)
    return magnitude / float(f.std())


def pipeline(fill, alpha, elastic=True):
    ops = [
        A.HorizontalFlip(p=P),
        A.VerticalFlip(p=P),
        A.RandomRotate90(p=P),
        A.Rotate(limit=(-45, 45), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=0, p=P),
        A.Affine(scale=(0.8, 1.2), shear=(-10, 10), translate_percent=(-0.05, 0.05),
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=0, p=P),
    ]
    if elastic:
        ops.append(A.ElasticTransform(alpha=alpha, sigma=50, p=P))
    ops += [
        A.RandomBrightnessContrast(brightness_limit=(-0.1, 0.1), contrast_limit=0.0, p=P),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-0.2, 0.25), p=P),
        A.RandomGamma(gamma_limit=(80, 120), p=P),
        A.GaussianBlur(sigma_limit=(0.5, 1.5), blur_limit=0, p=P),
        A.Illumination(mode="linear", intensity_range=(0.05, 0.2), p=P),
        A.GaussNoise(std_range=(0.005, 0.02), p=P),
    ]
    return A.Compose(ops, seed=0)


def main():
    src = Path(sys.argv[1])
    n_elastic, n_plain = int(sys.argv[2]), int(sys.argv[3])
    images = [tifffile.imread(p).astype(np.float32) / 65535.0 for p in sorted((src / "images").glob("*.tif"))]
    masks = [tifffile.imread(p).astype(np.int32) for p in sorted((src / "labels").glob("*.tif"))]
    fill = float(np.median(images[0]))
    alpha = elastic_alpha((2,) + images[0].shape, 50, 4.0)
    print(f"albumentations {A.__version__}, opencv threads {cv2.getNumThreads()}, elastic alpha {alpha:.0f}")
    for name, elastic, n in [("with elastic", True, n_elastic), ("no elastic", False, n_plain)]:
        t = pipeline(fill, alpha, elastic)
        t(image=images[0], mask=masks[0])  # warm-up
        start = time.perf_counter()
        for k in range(n):
            out = t(image=images[k % len(images)], mask=masks[k % len(masks)])
            assert out["image"].shape == images[0].shape
        secs = time.perf_counter() - start
        print(f"albumentations 2048x2048, all ops p=0.5 ({name}): {n} images in {secs:.2f} s = {n / secs:.2f} images/s")


if __name__ == "__main__":
    main()
