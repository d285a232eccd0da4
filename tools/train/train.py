"""Trains the shipped emoji model in three time-budgeted phases.

1. vae:     AutoencoderKL, 64x64 RGB <-> 16x16x4 (L1 + MSE + 1e-6 KL).
2. teacher: CLIP text encoder + UNet2DConditionModel trained together,
            v-prediction on a cosine schedule (T = 1024), 10% empty prompts
            so classifier-free guidance works, EMA weights.
3. distill: progressive distillation (Salimans & Ho 2022) of the guided
            teacher (scale configs.TEACHER_GUIDANCE): 64 -> 32 -> 16 -> 8 -> 4
            DDIM steps, each round a student learns to do two of its teacher's
            DDIM steps in one.

Each phase writes OUT/<phase>.safetensors (float32) and a line per report to
OUT/log.txt; a phase whose output exists (in OUT or --resume) is loaded, not
retrained, so a run can be continued on another machine. Budgets are wall
clock, so one command fits a given slot on a CPU or a GPU:

    python tools/train/train.py WORK OUT --budget 500 [--device cuda]

WORK holds emoji64.npz (prepare_data.py) and tokens.npz (tokenize_captions.py).
--teacher-from DIR starts the teacher from DIR's text encoder and teacher
(fine-tuning, e.g. on the CLDR keyword captions) instead of from scratch.
Export a diffusers folder with export.py.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

import configs

SHARES = {"vae": 0.22, "teacher": 0.45, "distill": 0.33}
DISTILL_FROM = 64
DISTILL_TO = configs.STUDENT_STEPS
COND_DROP = 0.1


class Run:
    def __init__(self, a):
        self.a = a
        self.dev = torch.device(a.device)
        self.t0 = time.time()
        os.makedirs(a.out, exist_ok=True)
        self.log_file = open(os.path.join(a.out, "log.txt"), "a")
        self.meta_path = os.path.join(a.out, "meta.json")
        self.meta = {}
        for d in (a.resume, a.out):
            p = d and os.path.join(d, "meta.json")
            if p and os.path.exists(p):
                self.meta.update(json.load(open(p)))

    def log(self, msg):
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def find(self, name):
        for d in (self.a.out, self.a.resume):
            if d and os.path.exists(os.path.join(d, name)):
                return os.path.join(d, name)
        return None

    def save(self, name, state, **meta):
        save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()},
                  os.path.join(self.a.out, name + ".tmp"))
        os.replace(os.path.join(self.a.out, name + ".tmp"), os.path.join(self.a.out, name))
        self.meta.update(meta)
        json.dump(self.meta, open(self.meta_path, "w"), indent=1)

    def deadline(self, phase):
        """End time of a phase: its share of what is left of the budget."""
        left = self.a.budget - (time.time() - self.t0)
        order = [p for p in SHARES if p not in self.done]
        share = SHARES[phase] / sum(SHARES[p] for p in order)
        return time.time() + max(left * share, 1.0)


def set_lr(opt, base, frac, step, warmup):
    """Linear warm-up over `warmup` steps, then cosine decay over the phase's time."""
    lr = base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    for g in opt.param_groups:
        g["lr"] = lr


def update(opt, loss, params):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def psnr(vae, images, batch=256):
    vae.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            mse = ((y - x) / 2).pow(2).flatten(1).mean(1)
            total += (10 * torch.log10(1 / mse)).sum().item()
    vae.train()
    return total / len(images)


def train_vae(r, train, held):
    torch.manual_seed(0)
    vae = AutoencoderKL(**configs.VAE).to(r.dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=r.a.vae_lr, weight_decay=0.0)
    end = r.deadline("vae")
    start, step, seen = time.time(), 0, 0
    gen = torch.Generator(device=r.dev).manual_seed(0)
    while time.time() < end:
        frac = (time.time() - start) / (end - start)
        set_lr(opt, r.a.vae_lr, frac, step, 100)
        x = train[torch.randint(0, len(train), (r.a.vae_batch,), device=r.dev, generator=gen)]
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample(generator=gen)).sample
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        loss = rec + 1e-6 * post.kl().mean()
        update(opt, loss, vae.parameters())
        step += 1
        seen += len(x)
        if step % 500 == 0:
            r.log(f"vae step {step} rec {rec.item():.4f} {seen / (time.time() - start):.0f} img/s")
    p = psnr(vae, held)
    r.log(f"vae done: {step} steps, {seen} images, {time.time() - start:.0f}s, held-out PSNR {p:.2f} dB")
    r.save("vae.safetensors", vae.state_dict(), vae_psnr=p, vae_steps=step, vae_seconds=time.time() - start,
           vae_images=seen)
    return vae


def load_vae(r):
    vae = AutoencoderKL(**configs.VAE)
    vae.load_state_dict(load_file(r.find("vae.safetensors")))
    return vae.to(r.dev)


@torch.no_grad()
def encode_all(r, vae, images):
    vae.eval()
    lat = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    if "scaling_factor" not in r.meta:
        r.meta["scaling_factor"] = float(1.0 / lat.std())
    return lat * r.meta["scaling_factor"]


def new_text_encoder():
    return CLIPTextModel(CLIPTextConfig(**configs.TEXT))


def schedule(dev):
    s = DDIMScheduler(**configs.SCHEDULER)
    ab = s.alphas_cumprod.double()
    return ab.to(dev)


def coefficients(ab, t):
    """sqrt(ab_t), sqrt(1 - ab_t) as (N, 1, 1, 1) float32, with ab(-1) = 1
    (set_alpha_to_one: the step after the last lands on the clean sample)."""
    a = torch.where(t >= 0, ab[t.clamp(min=0)], torch.ones_like(ab[:1]))
    return a.sqrt().float()[:, None, None, None], (1 - a).sqrt().float()[:, None, None, None]


def ema_update(ema, model, decay):
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def pick_ids(r, ids, empty, idx, gen):
    """One random caption variant per sample; COND_DROP of them empty."""
    var = torch.randint(0, ids.shape[1], (len(idx),), device=r.dev, generator=gen)
    out = ids[idx, var]
    drop = torch.rand(len(idx), device=r.dev, generator=gen) < COND_DROP
    return torch.where(drop[:, None], empty[None], out)


def train_teacher(r, lat, ids, empty):
    torch.manual_seed(1)
    text, unet = new_text_encoder().to(r.dev), UNet2DConditionModel(**configs.UNET).to(r.dev)
    ema_text, ema_unet = new_text_encoder().to(r.dev), UNet2DConditionModel(**configs.UNET).to(r.dev)
    if r.a.teacher_from:
        # Fine-tuning (e.g. on richer captions) from an earlier teacher.
        text.load_state_dict(load_file(os.path.join(r.a.teacher_from, "text_encoder.safetensors")), strict=False)
        unet.load_state_dict(load_file(os.path.join(r.a.teacher_from, "teacher.safetensors")))
        r.log(f"teacher: fine-tuning from {r.a.teacher_from}")
    ema_text.load_state_dict(text.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    params = list(text.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=r.a.lr, weight_decay=0.0)
    ab = schedule(r.dev)
    T = len(ab)
    end = r.deadline("teacher")
    start, step, seen = time.time(), 0, 0
    gen = torch.Generator(device=r.dev).manual_seed(1)
    while time.time() < end:
        frac = (time.time() - start) / (end - start)
        set_lr(opt, r.a.lr, frac, step, 200)
        idx = torch.randint(0, len(lat), (r.a.batch,), device=r.dev, generator=gen)
        x0 = lat[idx]
        t = torch.randint(0, T, (len(idx),), device=r.dev, generator=gen)
        eps = torch.randn(x0.shape, device=r.dev, generator=gen)
        a, s = coefficients(ab, t)
        zt = a * x0 + s * eps
        target = a * eps - s * x0
        cond = text(pick_ids(r, ids, empty, idx, gen)).last_hidden_state
        v = unet(zt, t, cond).sample
        loss = F.mse_loss(v, target)
        update(opt, loss, params)
        step += 1
        seen += len(idx)
        ema_update(ema_text, text, min(r.a.ema, (1 + step) / (10 + step)))
        ema_update(ema_unet, unet, min(r.a.ema, (1 + step) / (10 + step)))
        if step % 500 == 0:
            r.log(f"teacher step {step} loss {loss.item():.4f} {seen / (time.time() - start):.0f} img/s")
    r.log(f"teacher done: {step} steps, {seen} samples, {time.time() - start:.0f}s")
    r.save("text_encoder.safetensors", ema_text.state_dict())
    r.save("teacher.safetensors", ema_unet.state_dict(), teacher_steps=step, teacher_seconds=time.time() - start,
           teacher_samples=seen)
    return ema_text, ema_unet


def load_unet(r, name):
    unet = UNet2DConditionModel(**configs.UNET)
    unet.load_state_dict(load_file(r.find(name)))
    return unet.to(r.dev)


def ddim(z, v, a_t, s_t, a_s, s_s):
    """One deterministic DDIM step for a v-prediction."""
    x = a_t * z - s_t * v
    e = s_t * z + a_t * v
    return a_s * x + s_s * e


def v_target(zt, z, a_t, s_t, a_e, s_e):
    """The v a student must predict at zt (coefficients a_t, s_t) so that one
    deterministic DDIM step lands on z (coefficients a_e, s_e): what the
    teacher's several steps reached."""
    ratio = s_e / s_t
    x_target = (z - ratio * zt) / (a_e - ratio * a_t)
    return (a_t * zt - x_target) / s_t


def distill(r, text, teacher, lat, ids, empty):
    ab = schedule(r.dev)
    T = len(ab)

    text.eval()
    teacher.eval()
    if r.meta.get("student_steps") and r.find("student.safetensors"):
        teacher, n, guided = load_unet(r, "student.safetensors").eval(), r.meta["student_steps"] // 2, False
        r.log(f"distill: resuming from the {n * 2}-step student")
    else:
        n, guided = DISTILL_FROM // 2, True
    rounds = int(math.log2(n // DISTILL_TO)) + 1
    torch.manual_seed(2)
    gen = torch.Generator(device=r.dev).manual_seed(2)
    end = r.deadline("distill")
    while n >= DISTILL_TO:
        round_end = time.time() + (end - time.time()) / rounds
        student = UNet2DConditionModel(**configs.UNET).to(r.dev)
        student.load_state_dict(teacher.state_dict())
        opt = torch.optim.AdamW(student.parameters(), lr=r.a.distill_lr, weight_decay=0.0)
        k = T // n  # student stride; the teacher takes two steps of k / 2
        start, step = time.time(), 0
        while time.time() < round_end:
            frac = (time.time() - start) / (round_end - start)
            set_lr(opt, r.a.distill_lr, frac, step, 50)
            idx = torch.randint(0, len(lat), (r.a.batch,), device=r.dev, generator=gen)
            x0 = lat[idx]
            t = (k - 1) + k * torch.randint(0, n, (len(idx),), device=r.dev, generator=gen)
            t1, t2 = t - k // 2, t - k
            a_t, s_t = coefficients(ab, t)
            a_1, s_1 = coefficients(ab, t1)
            a_2, s_2 = coefficients(ab, t2)
            eps = torch.randn(x0.shape, device=r.dev, generator=gen)
            zt = a_t * x0 + s_t * eps
            tok = pick_ids(r, ids, empty, idx, gen)
            with torch.no_grad():
                cond = text(tok).last_hidden_state
                if guided:
                    unc = text(empty[None].expand(len(idx), -1)).last_hidden_state

                    def teach(z, tt):
                        vc, vu = teacher(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([cond, unc])).sample.chunk(2)
                        return vu + configs.TEACHER_GUIDANCE * (vc - vu)
                else:
                    def teach(z, tt):
                        return teacher(z, tt, cond).sample
                z1 = ddim(zt, teach(zt, t), a_t, s_t, a_1, s_1)
                z2 = ddim(z1, teach(z1, t1.clamp(min=0)), a_1, s_1, a_2, s_2)
                target = v_target(zt, z2, a_t, s_t, a_2, s_2)
            v = student(zt, t, cond).sample
            # v-space MSE = x-space MSE weighted by SNR + 1 (Salimans & Ho).
            loss = F.mse_loss(v, target)
            update(opt, loss, student.parameters())
            step += 1
            if step % 200 == 0:
                r.log(f"distill {2 * n}->{n} step {step} loss {loss.item():.5f}")
        r.log(f"distill {2 * n}->{n} done: {step} steps, {time.time() - start:.0f}s")
        r.meta.setdefault("distill_rounds", []).append(
            dict(teacher_steps=2 * n, student_steps=n, steps=step, seconds=time.time() - start, guided=guided))
        r.save("student.safetensors", student.state_dict(), student_steps=n)
        teacher, guided, rounds = student.eval(), False, rounds - 1
        n //= 2
    return student


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--resume", help="folder with outputs of an earlier run to continue from")
    ap.add_argument("--budget", type=float, default=600, help="wall-clock seconds for all phases")
    ap.add_argument("--teacher-from", help="folder with text_encoder/teacher.safetensors to fine-tune from "
                    "(instead of training the teacher from scratch)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vae-batch", type=int, default=64)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--distill-lr", type=float, default=2e-4)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    r = Run(a)
    r.log(f"device {a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else torch.get_num_threads()})"
          f", torch {torch.__version__}, budget {a.budget:.0f}s")
    data = np.load(os.path.join(a.work, "emoji64.npz"))
    tokens = np.load(os.path.join(a.work, "tokens.npz"))
    keep = ~data["heldout"]
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(r.dev)
    train, held = images[torch.from_numpy(keep).to(r.dev)], images[torch.from_numpy(~keep).to(r.dev)]
    ids = torch.from_numpy(tokens["ids"][keep]).long().to(r.dev)
    empty = torch.from_numpy(tokens["empty"]).long().to(r.dev)
    r.done = {p for p, f in [("vae", "vae.safetensors"), ("teacher", "teacher.safetensors")] if r.find(f)}
    if a.teacher_from:
        # A new teacher: only what this run itself wrote counts as done after
        # the VAE (the resumed folder's teacher and students are the old ones).
        own = lambda f: os.path.exists(os.path.join(a.out, f))  # noqa: E731
        r.done = {"vae"} & r.done | ({"teacher"} if own("teacher.safetensors") else set())
        if not own("student.safetensors"):
            r.meta.pop("student_steps", None)
    if r.meta.get("student_steps") == DISTILL_TO and r.find("student.safetensors"):
        r.done.add("distill")

    vae = load_vae(r) if "vae" in r.done else train_vae(r, train, held)
    r.done.add("vae")
    lat = encode_all(r, vae, train)
    r.log(f"latents {tuple(lat.shape)}, scaling factor {r.meta['scaling_factor']:.4f}")
    del vae
    if "teacher" in r.done:
        text = new_text_encoder()
        text.load_state_dict(load_file(r.find("text_encoder.safetensors")))
        text, teacher = text.to(r.dev), load_unet(r, "teacher.safetensors")
    else:
        text, teacher = train_teacher(r, lat, ids, empty)
    r.done.add("teacher")
    if "distill" not in r.done:
        distill(r, text, teacher, lat, ids, empty)
    json.dump(r.meta, open(r.meta_path, "w"), indent=1)
    r.log("all phases done")


if __name__ == "__main__":
    main()
