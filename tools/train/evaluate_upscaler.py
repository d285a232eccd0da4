"""Measures the emoji 4x upscaler against the real 256x256 images of the
held-out emoji (never trained on), from their 64x64 box-filtered versions
(what the generator is trained to make), next to bicubic interpolation and
the VAE's own reconstruction (encode, decode: what its latents can hold).

Metrics, per image then mean +- standard error over the images:
- PSNR (dB) against the real 256x256 image (RGB, 8-bit);
- sharpness: mean |Laplacian| of the 8-bit luma, as a fraction of the real
  image's (1.0 = as much fine detail as the original; bicubic is blurrier).

The upscaler runs in diffusers' own StableDiffusionUpscalePipeline loaded
from the folder, so the numbers are those of the shipped weights.

    python tools/train/evaluate_upscaler.py WORK www/models/emoji-upscaler [--teacher DIR] [--out docs/upscaler-eval.json]
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionUpscalePipeline
from PIL import Image

import configs

LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]


def luma(x):
    """x: (N, 3, H, W) in [0, 255] -> (N, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    return (x * w).sum(1, keepdim=True)


def sharpness(x):
    return F.conv2d(luma(x), LAPLACE).abs().flatten(1).mean(1)


def psnr(x, ref):
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse)


def stats(v):
    v = np.asarray(v, dtype=np.float64)
    return dict(mean=float(v.mean()), se=float(v.std(ddof=1) / np.sqrt(len(v))))


def bicubic(lo):
    out = [np.asarray(Image.fromarray(im).resize((256, 256), Image.BICUBIC)) for im in lo]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


def upscale(pipe, lo, steps, noise_level, batch=16, seed=0):
    out = []
    for i in range(0, len(lo), batch):
        x = torch.from_numpy(lo[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0
        g = torch.Generator().manual_seed(seed + i)
        im = pipe([""] * len(x), image=x, num_inference_steps=steps, guidance_scale=1.0, noise_level=noise_level,
                  generator=g, output_type="np").images
        out.append(torch.from_numpy((im * 255).round()).permute(0, 3, 1, 2).float())
    return torch.cat(out)


def vae_roundtrip(pipe, hi, batch=16):
    out = []
    with torch.no_grad():
        for i in range(0, len(hi), batch):
            x = hi[i:i + batch] / 127.5 - 1
            y = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
            out.append(((y.clamp(-1, 1) + 1) * 127.5).round())
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("model")
    ap.add_argument("--teacher", help="the teacher's folder (train_upscaler.py --export-unet teacher), run at --teacher-steps")
    ap.add_argument("--teacher-steps", type=int, nargs="+", default=[4, 32])
    ap.add_argument("--n", type=int, default=0, help="first N held-out images (0: all)")
    ap.add_argument("--out")
    ap.add_argument("--grid", help="PNG: rows of low-res (nearest), bicubic, ours, real for 6 held-out emoji")
    a = ap.parse_args()
    lo_data, hi_data = np.load(os.path.join(a.work, "emoji64.npz")), np.load(os.path.join(a.work, "emoji256.npz"))
    held = hi_data["heldout"]
    lo, hi = lo_data["images"][held], hi_data["images"][held]
    if a.n:
        lo, hi = lo[:a.n], hi[:a.n]
    real = torch.from_numpy(hi).permute(0, 3, 1, 2).float()
    pipe = StableDiffusionUpscalePipeline.from_pretrained(a.model)
    pipe.set_progress_bar_config(disable=True)
    results, images = {"images": len(hi), "real_sharpness": stats(sharpness(real))}, {}
    base = sharpness(real)

    def report(name, x, **extra):
        r = dict(psnr=stats(psnr(x, real)), sharpness=stats(sharpness(x) / base), **extra)
        results[name] = r
        images[name] = x
        print(f"{name:28s} PSNR {r['psnr']['mean']:.2f} +- {r['psnr']['se']:.2f} dB, "
              f"sharpness {r['sharpness']['mean']:.3f} +- {r['sharpness']['se']:.3f} of real", flush=True)

    report("bicubic", bicubic(lo))
    report("vae_reconstruction", vae_roundtrip(pipe, real))
    t = time.time()
    report("upscaler_4_steps", upscale(pipe, lo, 4, configs.UPSCALER_NOISE_LEVEL),
           seconds_per_image=(time.time() - t) / len(lo))
    if a.teacher:
        teacher = StableDiffusionUpscalePipeline.from_pretrained(a.teacher)
        teacher.set_progress_bar_config(disable=True)
        for s in a.teacher_steps:
            report(f"teacher_{s}_steps", upscale(teacher, lo, s, configs.UPSCALER_NOISE_LEVEL))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    if a.grid:
        pick = np.linspace(0, len(lo) - 1, 6).astype(int)
        near = torch.from_numpy(lo).permute(0, 3, 1, 2).float().repeat_interleave(4, 2).repeat_interleave(4, 3)
        cols = [near, images["bicubic"], images["upscaler_4_steps"], real]
        rows = [torch.cat([c[i] for c in cols], 2) for i in pick]
        grid = torch.cat(rows, 1).permute(1, 2, 0).clamp(0, 255).byte().numpy()
        Image.fromarray(grid).save(a.grid)


if __name__ == "__main__":
    main()
