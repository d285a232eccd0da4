"""Trains the emoji AutoencoderKL (64x64 RGB <-> 16x16x4 latents) on CPU.

Resumable: WORK/vae/ckpt.pt holds model, optimizer and step; the best model
by held-out PSNR is saved in the diffusers layout to WORK/vae/best/.
Logs one line per eval to WORK/vae/log.txt.

    nice -n 19 python tools/train/train_vae.py WORK [--steps 30000]
"""

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64, 128), layers_per_block=1,
              down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
              latent_channels=4, norm_num_groups=32, sample_size=64)


def psnr(model, images):
    """Mean PSNR (dB) of encode(mean) -> decode over images in [-1, 1]."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(images), 64):
            x = images[i:i + 64]
            y = model.decode(model.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            mse = ((y - x) / 2).pow(2).flatten(1).mean(1)
            total += (10 * torch.log10(1 / mse)).sum().item()
    model.train()
    return total / len(images)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl", type=float, default=1e-6)
    ap.add_argument("--eval-every", type=int, default=500)
    a = ap.parse_args()
    torch.manual_seed(0)
    out = os.path.join(a.work, "vae")
    os.makedirs(out, exist_ok=True)
    data = np.load(os.path.join(a.work, "emoji64.npz"))
    imgs = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    train, held = imgs[~data["heldout"]], imgs[data["heldout"]]

    model = AutoencoderKL(**CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    step, best = 0, 0.0
    ckpt = os.path.join(out, "ckpt.pt")
    if os.path.exists(ckpt):
        s = torch.load(ckpt, weights_only=False)
        model.load_state_dict(s["model"]); opt.load_state_dict(s["opt"])
        step, best = s["step"], s["best"]
        torch.set_rng_state(s["rng"])
        print(f"resumed at step {step}, best PSNR {best:.2f}")
    log = open(os.path.join(out, "log.txt"), "a")
    gen = torch.Generator().manual_seed(step)
    t0, seen = time.time(), 0
    while step < a.steps:
        idx = torch.randint(0, len(train), (a.batch,), generator=gen)
        x = train[idx]
        lr = a.lr * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        post = model.encode(x).latent_dist
        y = model.decode(post.sample(generator=gen)).sample
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        loss = rec + a.kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += a.batch
        if step % a.eval_every == 0 or step == a.steps:
            p = psnr(model, held)
            line = (f"step {step} loss {loss.item():.4f} rec {rec.item():.4f} lr {lr:.2e} "
                    f"heldout_psnr {p:.2f} img/s {seen / (time.time() - t0):.1f} {time.strftime('%H:%M:%S')}")
            print(line, flush=True); log.write(line + "\n"); log.flush()
            t0, seen = time.time(), 0
            if p > best:
                best = p
                model.save_pretrained(os.path.join(out, "best"))
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
                        "rng": torch.get_rng_state()}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)


if __name__ == "__main__":
    main()
