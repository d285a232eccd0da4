"""Trains the emoji 4x upscaler (64x64 -> 256x256) in diffusers'
StableDiffusionUpscalePipeline layout, in time-budgeted, resumable phases:

1. vae:     the emoji AutoencoderKL (configs.UPSCALER_VAE: the generator's
            VAE without the mid-block attention, so it is a pure convolution
            network) fine-tuned on random 64x64 crops of the 256x256
            originals: 256x256 RGB <-> 64x64x4 *anchored* latents, whose
            first three channels are the 4x box-filtered image itself and
            the fourth a detail channel (see train_vae).
2. teacher: UNet2DConditionModel (configs.UPSCALER_UNET), input = noisy
            latents (4) + the noised 64x64 image (3), the low-res noise level
            as class label (diffusers' `num_class_embeds`, as the SD x4
            upscaler); v-prediction on the emoji cosine schedule (T = 1024),
            the anchored channels weighted ANCHOR_WEIGHT in the loss, trained
            on aligned 32x32-latent / 32x32-pixel crops (the network is fully
            convolutional), EMA weights.
3. distill: a 4-step student (trailing DDIM grid) that learns in one step
            what SUBSTEPS deterministic DDIM steps of the teacher do.
4. decoder: the VAE's decoder fine-tuned to decode the student's own
            latents (of SAMPLED training images) into the real images.

The UNet has no attention, so it never reads the prompt; diffusers' pipeline
still runs a text encoder, so the folder carries a tiny one
(configs.UPSCALER_TEXT, the real CLIP tokenizer, seeded random weights) whose
output no layer uses.

Each phase writes OUT/<phase>.safetensors and a line per report to
OUT/log.txt; a phase whose output exists is skipped, and the teacher and
student save every --save-every seconds, continuing from there when run
again until their budgets (seconds, summed over calls) are spent.

    python tools/train/train_upscaler.py WORK OUT --vae 900 --teacher 3900 --distill 480 --decoder 540 \
        [--vae-init OLD/vae.safetensors --teacher-init OLD/teacher.safetensors]
    python tools/train/train_upscaler.py WORK OUT --export www/models/emoji-upscaler

WORK holds emoji64.npz and emoji256.npz (prepare_data.py --size 64 / 256).
"""

import argparse
import json
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import configs
import train

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
GENERATOR = os.path.join(ROOT, "www", "models", "emoji-4step")
CROP = 32  # latents (= low-res pixels) per side of a training crop
VAE_CROP = 64  # pixels per side of a VAE training crop
ANCHORED = 3  # latent channels that are the low-res image itself
ANCHOR_NOISE = 0.1  # most noise added to those channels when training the decoder
DETAIL_NOISE = 0.5  # most noise added to the detail channel (RMS ~1) when training the decoder
DETAIL_DROP = 0.1  # share of decoder training crops whose detail channel is zeros
# The UNet's loss weighs the anchored channels this much more than the detail
# channel: they must be the input image to the pixel, which a loss averaged
# over all four channels (the detail channel's error the larger) taught too
# slowly (at 5000 steps their x0 still missed by 0.11 RMS at t = T - 1).
ANCHOR_WEIGHT = 8.0
SAMPLED = 1024  # training images the decoder sees as the student makes them


def latent_mse(v, target):
    w = torch.tensor([ANCHOR_WEIGHT] * ANCHORED + [1.0] * (v.shape[1] - ANCHORED), device=v.device)
    w = w / w.mean()
    return ((v - target).pow(2) * w[None, :, None, None]).mean()


def load_data(work, dev):
    lo, hi = np.load(os.path.join(work, "emoji64.npz")), np.load(os.path.join(work, "emoji256.npz"))
    assert (lo["codes"] == hi["codes"]).all(), "emoji64.npz and emoji256.npz list different emoji"
    f = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731  (uint8, NCHW)
    held = torch.from_numpy(hi["heldout"])
    return f(lo["images"]).to(dev), f(hi["images"]).to(dev), held.to(dev)


def to_float(x):
    return x.float().div(127.5).sub(1)


class Budget:
    """Seconds spent in a phase over all calls, kept in meta.json."""

    def __init__(self, run, phase, total):
        self.run, self.phase, self.total = run, phase, total
        self.before = run.meta.get(f"{phase}_seconds", 0.0)
        self.start = time.time()

    def spent(self):
        return self.before + time.time() - self.start

    def frac(self):
        return min(self.spent() / self.total, 1.0)

    def left(self):
        return self.spent() < self.total


def random_flip(gen, *xs):
    flip = torch.rand(len(xs[0]), generator=gen, device=xs[0].device) < 0.5
    return [torch.where(flip[:, None, None, None], x.flip(-1), x) for x in xs]


def low_res(x):
    """The 4x box-filtered image (what prepare_data.py makes at 64x64 and the
    generator is trained on): the first three latent channels."""
    return F.avg_pool2d(x, 4)


def latents_of(vae, x):
    """Anchored latents of 256x256 images x in [-1, 1]: the low-res image
    itself (3 channels) and the encoder's detail channel (its mean)."""
    d = vae.encode(x).latent_dist.mean[:, ANCHORED:]
    return torch.cat([low_res(x), d], 1)


def vae_psnr(vae, images, batch=16, detail=True):
    """Mean PSNR (dB) of 256x256 images decoded from their anchored latents;
    detail=False replaces the detail channel by zeros, so the decoder alone
    upscales the low-res image (what a UNet that knows nothing gives)."""
    vae.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_float(images[i:i + batch])
            z = latents_of(vae, x)
            if not detail:
                z[:, ANCHORED:] = 0
            y = vae.decode(z).sample.clamp(-1, 1)
            mse = ((y - x) / 2).pow(2).flatten(1).mean(1)
            total += (10 * torch.log10(1 / mse)).sum().item()
    vae.train()
    return total / len(images)


def train_vae(r, hi, held, seconds):
    """Anchored latents: the first three channels are the 4x box-filtered
    image, the fourth a detail channel. The encoder learns both (its first
    three channels pulled to the low-res image, so encode() stays a VAE), the
    decoder learns to upscale from the low-res image (up to ANCHOR_NOISE of
    noise added) plus a detail
    channel it sees with noise added (up to DETAIL_NOISE times its RMS, kept
    near 1) or not at all (DETAIL_DROP of the crops), so that a UNet's
    imperfect latents decode to a clean image instead of blotches: the generator's latent space, where a 3x3 blur of
    the latents costs 9 dB, made the first upscalers worse than bicubic."""
    vae = AutoencoderKL(**configs.UPSCALER_VAE)
    init = r.a.vae_init or os.path.join(GENERATOR, "vae", "diffusion_pytorch_model.safetensors")
    state = load_file(init)
    missing, unexpected = vae.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not missing and all(".attentions." in k for k in unexpected), (missing, unexpected)
    vae = vae.to(r.dev)
    train_x, eval_x = hi[~held], hi[held][:64]
    r.log(f"vae: from {init}, anchored latents")
    opt = torch.optim.AdamW(vae.parameters(), lr=r.a.vae_lr, weight_decay=0.0)
    b = Budget(r, "vae", seconds)
    gen = torch.Generator(device=r.dev).manual_seed(4)
    step, losses = 0, []
    while b.left():
        train.set_lr(opt, r.a.vae_lr, b.frac(), step, 50)
        idx = torch.randint(0, len(train_x), (r.a.vae_batch,), device=r.dev, generator=gen)
        y0, x0 = (4 * torch.randint(0, (256 - VAE_CROP) // 4 + 1, (2,), generator=gen, device=r.dev)).tolist()
        x = to_float(train_x[idx, :, y0:y0 + VAE_CROP, x0:x0 + VAE_CROP])
        (x,) = random_flip(gen, x)
        post = vae.encode(x).latent_dist
        lo, d = low_res(x), post.mean[:, ANCHORED:]
        n = len(x)
        s_a = ANCHOR_NOISE * torch.rand(n, 1, 1, 1, device=r.dev, generator=gen)
        s_d = DETAIL_NOISE * torch.rand(n, 1, 1, 1, device=r.dev, generator=gen)
        keep = (torch.rand(n, 1, 1, 1, device=r.dev, generator=gen) >= DETAIL_DROP).float()
        z = torch.cat([lo + s_a * torch.randn(lo.shape, device=r.dev, generator=gen),
                       keep * (d + s_d * torch.randn(d.shape, device=r.dev, generator=gen))], 1)
        y = vae.decode(z).sample
        anchor = F.mse_loss(post.mean[:, :ANCHORED], lo)
        loss = F.l1_loss(y, x) + F.mse_loss(y, x) + anchor + 0.1 * (d.pow(2).mean() - 1).pow(2)
        train.update(opt, loss, vae.parameters())
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            r.log(f"vae step {step} loss {np.mean(losses[-50:]):.4f} anchor {anchor.item():.4f} "
                  f"detail rms {d.pow(2).mean().sqrt().item():.3f}")
        if step % 500 == 0:
            r.log(f"vae step {step}: held-out PSNR {vae_psnr(vae, eval_x):.2f} dB, "
                  f"without detail {vae_psnr(vae, eval_x, detail=False):.2f} dB")
    p, p0 = vae_psnr(vae, eval_x), vae_psnr(vae, eval_x, detail=False)
    r.log(f"vae done: {step} steps, {b.spent():.0f}s, held-out PSNR at 256x256 {p:.2f} dB, without detail {p0:.2f}")
    r.save("vae.safetensors", vae.state_dict(), vae_seconds=b.spent(), vae_steps=step, vae_psnr=p,
           vae_psnr_without_detail=p0)
    return vae


def load_vae(r):
    vae = AutoencoderKL(**configs.UPSCALER_VAE)
    vae.load_state_dict(load_file(r.find("vae.safetensors")))
    return vae.to(r.dev).eval()


def encode_all(r, vae, hi):
    """Every 256x256 image's anchored latents, scaled to unit std."""
    path = os.path.join(r.a.out, "latents.pt")
    if os.path.exists(path):
        return torch.load(path).to(r.dev)
    out = []
    with torch.no_grad():
        for i in range(0, len(hi), 32):
            out.append(latents_of(vae, to_float(hi[i:i + 32])))
    lat = torch.cat(out)
    scaling = 1.0 / lat.std().item()
    r.meta["scaling_factor"] = scaling
    json.dump(r.meta, open(r.meta_path, "w"), indent=1)
    lat = (lat * scaling).half()
    torch.save(lat, path)
    r.log(f"latents: {tuple(lat.shape)}, scaling_factor {scaling:.5f}")
    return lat


def low_res_noise(lo_sched, lo, gen, max_level):
    """The low-res image noised at a random level, as the pipeline does with
    its noise_level (DDPM add_noise), and the levels."""
    level = torch.randint(0, max_level + 1, (len(lo),), device=lo.device, generator=gen)
    ab = lo_sched.alphas_cumprod.to(lo.device)[level].float()[:, None, None, None]
    noise = torch.randn(lo.shape, device=lo.device, generator=gen)
    return ab.sqrt() * lo + (1 - ab).sqrt() * noise, level


def batch(r, lat, lo, gen, n):
    """Aligned crops: latents (N, 4, CROP, CROP), low-res pixels (N, 3, CROP, CROP)."""
    idx = torch.randint(0, len(lat), (n,), device=r.dev, generator=gen)
    y0, x0 = torch.randint(0, 64 - CROP + 1, (2,), generator=gen, device=r.dev).tolist()
    z = lat[idx, :, y0:y0 + CROP, x0:x0 + CROP].float()
    im = to_float(lo[idx, :, y0:y0 + CROP, x0:x0 + CROP])
    return random_flip(gen, z, im)


def new_unet(r):
    return UNet2DConditionModel(**configs.UPSCALER_UNET).to(r.dev)


def context(n, dev):
    """What the prompt would give the UNet: no layer reads it (no attention)."""
    return torch.zeros(n, 1, configs.UPSCALER_TEXT["hidden_size"], device=dev)


def train_teacher(r, lat, lo, lo_sched, seconds):
    torch.manual_seed(5)
    unet, ema = new_unet(r), new_unet(r)
    opt = torch.optim.AdamW(unet.parameters(), lr=r.a.lr, weight_decay=0.0)
    step = r.meta.get("teacher_steps", 0)
    if r.find("teacher-train.pt"):
        s = torch.load(r.find("teacher-train.pt"), weights_only=False)
        unet.load_state_dict(s["unet"]); ema.load_state_dict(s["ema"]); opt.load_state_dict(s["opt"])
        r.log(f"teacher: resuming at step {step}")
    else:
        if r.a.teacher_init:
            unet.load_state_dict(load_file(r.a.teacher_init))
            r.log(f"teacher: starting from {r.a.teacher_init}")
        ema.load_state_dict(unet.state_dict())
    n_params = sum(p.numel() for p in unet.parameters())
    ab = train.schedule(r.dev)
    T = len(ab)
    b = Budget(r, "teacher", seconds)
    gen = torch.Generator(device=r.dev).manual_seed(5 + step)
    last_save, losses = time.time(), []

    def save():
        torch.save(dict(unet=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict()),
                   os.path.join(r.a.out, "teacher-train.pt"))
        r.save("teacher-ema.safetensors", ema.state_dict(), teacher_seconds=b.spent(), teacher_steps=step,
               teacher_batch=r.a.batch, unet_parameters=n_params)

    r.log(f"teacher: {n_params} parameters, batch {r.a.batch} of {CROP}x{CROP} crops, "
          f"{b.spent():.0f}/{seconds:.0f}s done")
    while b.left():
        train.set_lr(opt, r.a.lr, b.frac(), step, 200)
        x0, im = batch(r, lat, lo, gen, r.a.batch)
        im, level = low_res_noise(lo_sched, im, gen, configs.UPSCALER_MAX_NOISE_LEVEL)
        t = torch.randint(0, T, (len(x0),), device=r.dev, generator=gen)
        eps = torch.randn(x0.shape, device=r.dev, generator=gen)
        a, s = train.coefficients(ab, t)
        v = unet(torch.cat([a * x0 + s * eps, im], 1), t, context(len(x0), r.dev), class_labels=level).sample
        loss = latent_mse(v, a * eps - s * x0)
        train.update(opt, loss, unet.parameters())
        step += 1
        losses.append(loss.item())
        train.ema_update(ema, unet, min(r.a.ema, (1 + step) / (10 + step)))
        if step % 100 == 0:
            r.log(f"teacher step {step} loss {np.mean(losses[-100:]):.4f} lr {opt.param_groups[0]['lr']:.2e}")
        if time.time() - last_save > r.a.save_every:
            save()
            last_save = time.time()
    save()
    r.save("teacher.safetensors", ema.state_dict())
    r.log(f"teacher done: {step} steps, {b.spent():.0f}s")
    return ema.eval()


def distill(r, teacher, lat, lo, lo_sched, seconds):
    ab = train.schedule(r.dev)
    T, n = len(ab), configs.STUDENT_STEPS
    k = T // n
    student = new_unet(r)
    opt = torch.optim.AdamW(student.parameters(), lr=r.a.distill_lr, weight_decay=0.0)
    step = r.meta.get("student_steps_trained", 0)
    if r.find("student-train.pt"):
        s = torch.load(r.find("student-train.pt"), weights_only=False)
        student.load_state_dict(s["unet"]); opt.load_state_dict(s["opt"])
        r.log(f"distill: resuming at step {step}")
    else:
        student.load_state_dict(teacher.state_dict())
    b = Budget(r, "student", seconds)
    gen = torch.Generator(device=r.dev).manual_seed(6 + step)
    last_save, losses = time.time(), []

    def save():
        torch.save(dict(unet=student.state_dict(), opt=opt.state_dict()), os.path.join(r.a.out, "student-train.pt"))
        r.save("student-latest.safetensors", student.state_dict(), student_seconds=b.spent(),
               student_steps_trained=step, student_substeps=r.a.substeps)

    r.log(f"distill: {n}-step student, {r.a.substeps} teacher steps per student step, "
          f"{b.spent():.0f}/{seconds:.0f}s done")
    while b.left():
        train.set_lr(opt, r.a.distill_lr, b.frac(), step, 50)
        x0, im = batch(r, lat, lo, gen, r.a.batch)
        im, level = low_res_noise(lo_sched, im, gen, configs.UPSCALER_MAX_NOISE_LEVEL)
        ctx = context(len(x0), r.dev)
        t = (k - 1) + k * torch.randint(0, n, (len(x0),), device=r.dev, generator=gen)
        eps = torch.randn(x0.shape, device=r.dev, generator=gen)
        a_t, s_t = train.coefficients(ab, t)
        zt = a_t * x0 + s_t * eps
        with torch.no_grad():
            z, tt, sub = zt, t, k // r.a.substeps
            for _ in range(r.a.substeps):
                v = teacher(torch.cat([z, im], 1), tt.clamp(min=0), ctx, class_labels=level).sample
                a_1, s_1 = train.coefficients(ab, tt)
                a_2, s_2 = train.coefficients(ab, tt - sub)
                z, tt = train.ddim(z, v, a_1, s_1, a_2, s_2), tt - sub
            v_target = train.v_target(zt, z, a_t, s_t, *train.coefficients(ab, t - k))
        v = student(torch.cat([zt, im], 1), t, ctx, class_labels=level).sample
        loss = latent_mse(v, v_target)
        train.update(opt, loss, student.parameters())
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            r.log(f"distill step {step} loss {np.mean(losses[-50:]):.5f} lr {opt.param_groups[0]['lr']:.2e}")
        if time.time() - last_save > r.a.save_every:
            save()
            last_save = time.time()
    save()
    r.save("student.safetensors", student.state_dict())
    r.log(f"distill done: {step} steps, {b.spent():.0f}s")


def student_samples(r, student, lo, lo_sched):
    """What the pipeline makes from SAMPLED training images: their indices,
    and the student's STUDENT_STEPS-step DDIM latents (eta 0, as the UNet's
    scaled latents) from each image noised at a level drawn from 0 to
    2 * UPSCALER_NOISE_LEVEL (the page's default is the middle)."""
    path = os.path.join(r.a.out, "samples.pt")
    if os.path.exists(path):
        pick, samples = torch.load(path)
        return pick.to(r.dev), samples.to(r.dev)
    ab = train.schedule(r.dev)
    T, n = len(ab), configs.STUDENT_STEPS
    gen = torch.Generator(device=r.dev).manual_seed(8)
    pick = torch.randperm(len(lo), generator=gen, device=r.dev)[:SAMPLED]
    out = []
    with torch.no_grad():
        for i in range(0, len(pick), 32):
            im = to_float(lo[pick[i:i + 32]])
            im, level = low_res_noise(lo_sched, im, gen, 2 * configs.UPSCALER_NOISE_LEVEL)
            z = torch.randn((len(im), 4, *im.shape[2:]), device=r.dev, generator=gen)
            for t in range(T - 1, -1, -(T // n)):
                tt = torch.full((len(im),), t, device=r.dev)
                v = student(torch.cat([z, im], 1), tt, context(len(im), r.dev), class_labels=level).sample
                z = train.ddim(z, v, *train.coefficients(ab, tt), *train.coefficients(ab, tt - T // n))
            out.append(z.half())
    samples = torch.cat(out)
    torch.save((pick, samples), path)
    r.log(f"student samples: {tuple(samples.shape)}")
    return pick, samples


def tune_decoder(r, pick, samples, lat, hi, seconds):
    """The VAE's decoder (and post_quant_conv) fine-tuned to decode what the
    student makes into the real 256x256 image: the student's anchored
    channels miss the input image by a few hundredths per pixel, enough to
    blur and blotch a decoder trained on exact latents alone. Half of each
    batch is the student's latents, half the true (anchored) ones, so that
    both decode. Aligned crops: 16x16 latents, 64x64 pixels. The encoder is
    left as it is."""
    vae = load_vae(r).train()
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in vae.encoder.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=r.a.vae_lr / 2, weight_decay=0.0)
    scaling = r.meta["scaling_factor"]
    b = Budget(r, "decoder", seconds)
    gen = torch.Generator(device=r.dev).manual_seed(9)
    c, step, losses = VAE_CROP // 4, 0, []
    while b.left():
        train.set_lr(opt, r.a.vae_lr / 2, b.frac(), step, 20)
        half = r.a.vae_batch // 2
        which = torch.randint(0, len(pick), (half,), device=r.dev, generator=gen)  # into the samples
        other = torch.randint(0, len(lat), (half,), device=r.dev, generator=gen)  # into all images
        y0, x0 = torch.randint(0, 64 - c + 1, (2,), generator=gen, device=r.dev).tolist()
        z = torch.cat([samples[which, :, y0:y0 + c, x0:x0 + c], lat[other, :, y0:y0 + c, x0:x0 + c]])
        x = to_float(hi[torch.cat([pick[which], other]), :, 4 * y0:4 * (y0 + c), 4 * x0:4 * (x0 + c)])
        z, x = random_flip(gen, z.float() / scaling, x)
        y = vae.decode(z).sample
        loss = F.l1_loss(y, x) + F.mse_loss(y, x)
        train.update(opt, loss, params)
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            r.log(f"decoder step {step} loss {np.mean(losses[-50:]):.4f} lr {opt.param_groups[0]['lr']:.2e}")
    r.save("vae-decoder.safetensors", vae.state_dict(), decoder_seconds=b.spent(), decoder_steps=step)
    r.log(f"decoder done: {step} steps, {b.spent():.0f}s")


def low_res_scheduler():
    return DDPMScheduler(**configs.UPSCALER_LOW_RES_SCHEDULER)


# diffusers' StableDiffusionUpscalePipeline sets any other VAE scaling_factor
# to this one (the SD x4 upscaler's) when it loads a folder.
UPSCALE_SCALING = 0.08333


def fold_scaling(state, scaling):
    """The VAE with its latents multiplied by k = scaling / UPSCALE_SCALING
    (the encoder's mean and log-variance through quant_conv, the decoder's
    input through post_quant_conv), so UPSCALE_SCALING times them is what the
    UNet was trained on (`scaling` times the unfolded latents) and decodes
    the same."""
    k = scaling / UPSCALE_SCALING
    state = {n: v.clone() for n, v in state.items()}
    c = configs.UPSCALER_VAE["latent_channels"]
    state["quant_conv.weight"][:c] *= k
    state["quant_conv.bias"][:c] *= k
    state["quant_conv.bias"][c:] += 2 * float(np.log(k))
    state["post_quant_conv.weight"] /= k
    return state


def export(r, out, unet_name):
    """The diffusers folder: StableDiffusionUpscalePipeline with f16 weights."""
    from diffusers import StableDiffusionUpscalePipeline

    vae = AutoencoderKL(**configs.UPSCALER_VAE, scaling_factor=UPSCALE_SCALING)
    vae_file = r.find("vae-decoder.safetensors") or r.find("vae.safetensors")
    vae.load_state_dict(fold_scaling(load_file(vae_file), r.meta["scaling_factor"]))
    unet = UNet2DConditionModel(**configs.UPSCALER_UNET)
    unet.load_state_dict(load_file(r.find(f"{unet_name}.safetensors")))
    torch.manual_seed(7)
    text = CLIPTextModel(CLIPTextConfig(**configs.UPSCALER_TEXT))
    tok = CLIPTokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "clip_tokenizer"))
    pipe = StableDiffusionUpscalePipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tok,
                                          unet=unet.eval(), low_res_scheduler=low_res_scheduler(),
                                          scheduler=DDIMScheduler(**configs.SCHEDULER),
                                          max_noise_level=configs.UPSCALER_MAX_NOISE_LEVEL)
    # The folder's own files go (its README.md, the model card, stays).
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    weights = [("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
               ("text_encoder", "model.safetensors")]
    for sub, fname in weights:
        state = getattr(pipe, sub).state_dict()
        save_file({k: v.half().contiguous() for k, v in state.items()}, os.path.join(out, sub, fname))
    tdir = os.path.join(out, "tokenizer")
    if os.path.exists(os.path.join(tdir, "tokenizer.json")):
        os.remove(os.path.join(tdir, "tokenizer.json"))
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(ROOT, "tests", "fixtures", "clip_tokenizer", f), os.path.join(tdir, f))
    total = sum(os.path.getsize(os.path.join(out, s, f)) for s, f in weights)
    r.log(f"exported {unet_name} to {out}: weights {total} bytes ({total / 1e6:.2f} MB)")


def finished(r, phase, budget):
    """Whether a budgeted phase wrote its final weights and spent its budget."""
    return r.find(f"{phase}.safetensors") and r.meta.get(f"{phase}_seconds", 0) >= budget


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--vae", type=float, default=600, help="seconds for the VAE fine-tuning")
    ap.add_argument("--teacher", type=float, default=1500, help="seconds for the teacher (over all calls)")
    ap.add_argument("--distill", type=float, default=900, help="seconds for the distillation (over all calls)")
    ap.add_argument("--decoder", type=float, default=600, help="seconds for the decoder's fine-tuning on the student's latents")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=2e-4)
    ap.add_argument("--vae-init", help="VAE weights to start from (default: the generator's)")
    ap.add_argument("--teacher-init", help="UNet weights the teacher starts from (default: random)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--distill-lr", type=float, default=1e-4)
    ap.add_argument("--substeps", type=int, default=8)
    ap.add_argument("--save-every", type=float, default=300)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N emoji (a quick check of the code)")
    ap.add_argument("--export", metavar="DIR", help="write the diffusers folder (student) and stop")
    ap.add_argument("--export-unet", default="student", choices=["student", "teacher", "student-latest"])
    a = ap.parse_args()
    r = train.Run(argparse.Namespace(**vars(a), resume=None, budget=0))
    if a.export:
        export(r, a.export, a.export_unet)
        return
    lo, hi, held = load_data(a.work, r.dev)
    if a.limit:
        lo, hi, held = lo[:a.limit], hi[:a.limit], held[:a.limit]
    vae = load_vae(r) if r.find("vae.safetensors") else train_vae(r, hi, held, a.vae).eval()
    lat = encode_all(r, vae, hi)[~held]
    del vae
    lo = lo[~held]
    lo_sched = low_res_scheduler()
    if finished(r, "teacher", a.teacher):
        teacher = new_unet(r)
        teacher.load_state_dict(load_file(r.find("teacher.safetensors")))
        teacher.eval()
    else:
        teacher = train_teacher(r, lat, lo, lo_sched, a.teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if not finished(r, "student", a.distill):
        distill(r, teacher, lat, lo, lo_sched, a.distill)
    del teacher
    if not r.find("vae-decoder.safetensors"):
        student = new_unet(r)
        student.load_state_dict(load_file(r.find("student.safetensors")))
        pick, samples = student_samples(r, student.eval(), lo, lo_sched)
        tune_decoder(r, pick, samples, lat, hi[~held], a.decoder)


if __name__ == "__main__":
    main()
