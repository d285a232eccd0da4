"""Writes tests/fixtures/pipelines/tiny/: a random-weight Stable Diffusion
pipeline in the diffusers layout (tiny UNet, KL VAE, CLIP text encoder, the
real CLIP tokenizer, DDIM scheduler), plus expected.safetensors: diffusers'
StableDiffusionPipeline images for fixed settings, started from the crate's
seeded noise (tools/noise.py) so the Rust pipeline can be compared exactly.
For eta > 0 diffusers' variance noise is drawn from the same stream.

Also writes tests/fixtures/pipelines/tiny-lcm/: the tiny pipeline's text
encoder, VAE and tokenizer (linked) with a guidance-distilled UNet
(time_cond_proj_dim) and an LCMScheduler, against diffusers'
LatentConsistencyModelPipeline; its per-step noise comes from the same stream.

Also writes tests/fixtures/pipelines/tiny-upscale/: the tiny pipeline's text
encoder, tokenizer and VAE weights (linked) with a UNet that takes the
low-resolution image beside the latents and the noise level as a class label,
against diffusers' StableDiffusionUpscalePipeline (the image's noise, the
initial latents and each step's noise from the same stream, in that order).

Also writes tests/fixtures/pipelines/emoji-4step/{expected.safetensors,cases.json}:
the same comparison for the shipped model in www/models/emoji-4step/, and
tests/fixtures/pipelines/emoji-upscaler/ for www/models/emoji-upscaler/ (its
input: the emoji-4step fixture's red_heart image, rounded to 8 bits).

    python tools/make_pipeline_fixtures.py            # all of them
    python tools/make_pipeline_fixtures.py tiny-lcm   # just that one (also tiny-upscale, emoji-upscaler)
"""

import json
import os
import shutil

import numpy as np
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, LatentConsistencyModelPipeline, LCMScheduler,
                       StableDiffusionPipeline, StableDiffusionUpscalePipeline, UNet2DConditionModel)
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_upscale
from diffusers.schedulers import scheduling_ddim, scheduling_lcm
from safetensors.torch import load_file
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import noise

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "pipelines", "tiny")

CASES = [
    dict(name="guided_eta0", prompt="a red heart", negative_prompt="blurry", seed=42, steps=4, eta=0.0,
         guidance_scale=3.0, spacing="leading"),
    dict(name="guided_eta1_trailing", prompt="cat face", negative_prompt="", seed=7, steps=3, eta=1.0,
         guidance_scale=5.0, spacing="trailing"),
    dict(name="unguided", prompt="pizza", negative_prompt="", seed=1, steps=2, eta=0.0,
         guidance_scale=1.0, spacing="leading"),
]


# The tiny pipeline's UNet (tiny-lcm's adds time_cond_proj_dim).
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                 attention_head_dim=4, norm_num_groups=16)


def build():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=16, sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, projection_dim=16))
    with torch.no_grad():  # make the nets' outputs large enough to matter
        for m in (unet, vae, text):
            for n, p in m.named_parameters():
                if p.dim() > 1:
                    p.mul_(2.0)
    tok = CLIPTokenizer.from_pretrained(os.path.join(ROOT, "clip_tokenizer"))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tok, unet=unet.eval(),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    # f16 storage keeps the fixture small; round the live weights the same way.
    with torch.no_grad():
        for m in (unet, vae, text):
            for p in m.parameters():
                p.copy_(p.half().float())
    return pipe


def save(pipe):
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    pipe.save_pretrained(OUT, safe_serialization=True)
    for sub, fname in [("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "model.safetensors")]:
        m = getattr(pipe, sub)
        save_file({k: v.half().contiguous() for k, v in m.state_dict().items()}, os.path.join(OUT, sub, fname))
    # The tokenizer files are the shared fixture's vocab.json + merges.txt (the
    # layout of public SD folders); link them instead of copying 1.4 MB, and drop
    # the tokenizer.json that transformers 5 writes instead.
    tdir = os.path.join(OUT, "tokenizer")
    for f in ("vocab.json", "merges.txt", "tokenizer.json"):
        if os.path.lexists(os.path.join(tdir, f)):
            os.remove(os.path.join(tdir, f))
    for f in ("vocab.json", "merges.txt"):
        os.symlink(os.path.join("..", "..", "..", "clip_tokenizer", f), os.path.join(tdir, f))


EMOJI_CASES = [
    # The page's default settings (the UNet takes the guidance scale as an
    # input: one pass per step).
    dict(name="red_heart", prompt="red heart", negative_prompt="", seed=0, steps=4, eta=0.0,
         guidance_scale=1.5, spacing="trailing"),
    # eta 1 with leading spacing: from t = 1023 (trailing) stock diffusers' f32
    # DDIM takes sqrt(1 - a_prev - std^2) of a value rounded below zero (NaN).
    dict(name="cat_face_eta1_guided_leading", prompt="cat face", negative_prompt="dog", seed=3, steps=4, eta=1.0,
         guidance_scale=2.0, spacing="leading"),
    dict(name="pizza_2_steps", prompt="pizza", negative_prompt="", seed=11, steps=2, eta=0.0,
         guidance_scale=1.0, spacing="trailing"),
]
EMOJI_MODEL = os.path.join(ROOT, "..", "..", "www", "models", "emoji-4step")
EMOJI_OUT = os.path.join(ROOT, "pipelines", "emoji-4step")


LCM_OUT = os.path.join(ROOT, "pipelines", "tiny-lcm")
LCM_CASES = [
    dict(name="lcm_4_steps", prompt="a red heart", negative_prompt="", seed=5, steps=4, eta=0.0,
         guidance_scale=8.5, spacing="leading"),
    dict(name="lcm_1_step", prompt="cat face", negative_prompt="", seed=9, steps=1, eta=0.0,
         guidance_scale=4.0, spacing="leading"),
    dict(name="lcm_3_steps_w0", prompt="pizza", negative_prompt="", seed=2, steps=3, eta=0.0,
         guidance_scale=1.0, spacing="leading"),
]


def lcm():
    """The tiny pipeline with a guidance-distilled UNet and LCMScheduler."""
    base = StableDiffusionPipeline.from_pretrained(OUT, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(8)
    unet = UNet2DConditionModel(**TINY_UNET, time_cond_proj_dim=8)
    with torch.no_grad():
        for p in unet.parameters():
            if p.dim() > 1:
                p.mul_(2.0)
            p.copy_(p.half().float())
    sched = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         original_inference_steps=50)
    pipe = LatentConsistencyModelPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                          unet=unet.eval(), scheduler=sched, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if os.path.isdir(LCM_OUT):
        shutil.rmtree(LCM_OUT)
    os.makedirs(LCM_OUT)
    pipe.unet.save_pretrained(os.path.join(LCM_OUT, "unet"))
    save_file({k: v.half().contiguous() for k, v in unet.state_dict().items()},
              os.path.join(LCM_OUT, "unet", "diffusion_pytorch_model.safetensors"))
    pipe.scheduler.save_pretrained(os.path.join(LCM_OUT, "scheduler"))
    with open(os.path.join(OUT, "model_index.json")) as f:
        index = json.load(f)
    index["_class_name"] = "LatentConsistencyModelPipeline"
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    with open(os.path.join(LCM_OUT, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    for sub in ("text_encoder", "vae", "tokenizer"):
        os.symlink(os.path.join("..", "tiny", sub), os.path.join(LCM_OUT, sub))
    images = {}
    for c in LCM_CASES:
        shape = (1, 4, 8, 8)  # 16×16 pixels, VAE factor 2
        n = int(np.prod(shape))
        stream = noise.gaussian(c["seed"], n * (c["steps"] + 1))
        latents = torch.from_numpy(stream[:n].reshape(shape).copy())
        chunks = iter(torch.from_numpy(stream[n * (i + 1): n * (i + 2)].reshape(shape).copy())
                      for i in range(c["steps"]))
        orig = scheduling_lcm.randn_tensor
        scheduling_lcm.randn_tensor = lambda *a, **k: next(chunks)
        try:
            out = pipe(c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"],
                       latents=latents, output_type="np", height=16, width=16).images
        finally:
            scheduling_lcm.randn_tensor = orig
        c["timesteps"] = [int(t) for t in pipe.scheduler.timesteps]
        images[c["name"]] = torch.from_numpy(out[0]).permute(2, 0, 1).contiguous()
    save_file(images, os.path.join(LCM_OUT, "expected.safetensors"))
    with open(os.path.join(LCM_OUT, "cases.json"), "w") as f:
        json.dump(LCM_CASES, f, indent=1)
    for k, v in images.items():
        print(k, tuple(v.shape), float(v.mean()), float(v.std()))


UPSCALE_OUT = os.path.join(ROOT, "pipelines", "tiny-upscale")
UPSCALE_CASES = [
    dict(name="upscale_guided", prompt="a red heart", negative_prompt="blurry", seed=4, steps=3, eta=0.0,
         guidance_scale=4.0, spacing="leading", noise_level=20),
    dict(name="upscale_eta1_trailing", prompt="cat face", negative_prompt="", seed=6, steps=2, eta=1.0,
         guidance_scale=1.0, spacing="trailing", noise_level=150),
]
EMOJI_UPSCALER = os.path.join(ROOT, "..", "..", "www", "models", "emoji-upscaler")
EMOJI_UPSCALER_OUT = os.path.join(ROOT, "pipelines", "emoji-upscaler")
EMOJI_UPSCALER_CASES = [
    # The page's settings: 4 steps, no guidance, noise level 20.
    dict(name="red_heart_x4", prompt="red heart", negative_prompt="", seed=0, steps=4, eta=0.0,
         guidance_scale=1.0, spacing="trailing", noise_level=20),
    # The middle 32x32 of the heart (any size upscales), eta 1 (leading: see
    # EMOJI_CASES on trailing), more noise.
    dict(name="heart_middle_x4_noisier_eta1", prompt="", negative_prompt="", seed=5, steps=2, eta=1.0,
         guidance_scale=1.0, spacing="leading", noise_level=120, crop=[16, 48]),
]


def tiny_upscaler():
    """The tiny pipeline with an upscaler UNet (7 input channels, noise-level
    classes) and its DDPM low-res scheduler, as StableDiffusionUpscalePipeline."""
    base = StableDiffusionPipeline.from_pretrained(OUT, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(9)
    unet = UNet2DConditionModel(**dict(TINY_UNET, in_channels=7), num_class_embeds=351)
    with torch.no_grad():
        for p in unet.parameters():
            if p.dim() > 1:
                p.mul_(2.0)
            p.copy_(p.half().float())
    # The pipeline takes the VAE's scaling_factor to be the SD x4 upscaler's.
    vae = AutoencoderKL.from_config(dict(base.vae.config, scaling_factor=0.08333))
    vae.load_state_dict(base.vae.state_dict())
    pipe = StableDiffusionUpscalePipeline(vae=vae.eval(), text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                          unet=unet.eval(), low_res_scheduler=DDPMScheduler(beta_schedule="linear"),
                                          scheduler=base.scheduler, max_noise_level=350)
    if os.path.isdir(UPSCALE_OUT):
        shutil.rmtree(UPSCALE_OUT)
    os.makedirs(UPSCALE_OUT)
    pipe.save_pretrained(UPSCALE_OUT, safe_serialization=True)
    save_file({k: v.half().contiguous() for k, v in unet.state_dict().items()},
              os.path.join(UPSCALE_OUT, "unet", "diffusion_pytorch_model.safetensors"))
    for sub in ("text_encoder", "tokenizer"):
        shutil.rmtree(os.path.join(UPSCALE_OUT, sub))
        os.symlink(os.path.join("..", "tiny", sub), os.path.join(UPSCALE_OUT, sub))
    vae_weights = os.path.join(UPSCALE_OUT, "vae", "diffusion_pytorch_model.safetensors")
    os.remove(vae_weights)
    os.symlink(os.path.join("..", "..", "tiny", "vae", "diffusion_pytorch_model.safetensors"), vae_weights)
    # An 8x8 RGBA image, the same formula as the Rust test's.
    y, x, ch = np.meshgrid(np.arange(8), np.arange(8), np.arange(4), indexing="ij")
    rgba = ((x * 37 + y * 91 + ch * 53) % 256).astype(np.uint8)
    upscale_fixture(pipe, UPSCALE_OUT, UPSCALE_CASES, rgba)


def upscale_fixture(pipe, out, cases, rgba):
    pipe.set_progress_bar_config(disable=True)
    full, images = rgba, {}
    for c in cases:
        rgba = full[c["crop"][0]:c["crop"][1], c["crop"][0]:c["crop"][1]] if "crop" in c else full
        h, w = rgba.shape[:2]
        image = torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).permute(2, 0, 1)[None].float() / 255.0
        shapes = [(1, 3, h, w), (1, 4, h, w)] + [(1, 4, h, w)] * c["steps"]
        sizes = [int(np.prod(s)) for s in shapes]
        stream = noise.gaussian(c["seed"], sum(sizes))
        chunks, at = [], 0
        for shape, n in zip(shapes, sizes):
            chunks.append(torch.from_numpy(stream[at:at + n].reshape(shape).copy()))
            at += n
        first, steps = iter(chunks[:2]), iter(chunks[2:])
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=c["spacing"])
        orig = (pipeline_stable_diffusion_upscale.randn_tensor, scheduling_ddim.randn_tensor)
        pipeline_stable_diffusion_upscale.randn_tensor = lambda *a, **k: next(first)
        scheduling_ddim.randn_tensor = lambda *a, **k: next(steps)
        try:
            result = pipe(c["prompt"], image=image, negative_prompt=c["negative_prompt"] or None,
                          num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"], eta=c["eta"],
                          noise_level=c["noise_level"], output_type="np").images
        finally:
            pipeline_stable_diffusion_upscale.randn_tensor, scheduling_ddim.randn_tensor = orig
        images[c["name"]] = torch.from_numpy(result[0]).permute(2, 0, 1).contiguous()
        images[c["name"] + ".input"] = torch.from_numpy(np.ascontiguousarray(rgba, dtype=np.float32))
    save_file(images, os.path.join(out, "expected.safetensors"))
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    for k, v in images.items():
        print(k, tuple(v.shape), float(v.mean()), float(v.std()))


def emoji_upscaler():
    """The shipped upscaler on the emoji-4step fixture's red heart."""
    pipe = StableDiffusionUpscalePipeline.from_pretrained(EMOJI_UPSCALER)
    heart = load_file(os.path.join(EMOJI_OUT, "expected.safetensors"))["red_heart"]  # [3, 64, 64] in [0, 1]
    rgb = (heart.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    os.makedirs(EMOJI_UPSCALER_OUT, exist_ok=True)
    upscale_fixture(pipe, EMOJI_UPSCALER_OUT, EMOJI_UPSCALER_CASES, rgba)


def run(pipe, c, size=16):
    latent = size // pipe.vae_scale_factor
    shape = (1, 4, latent, latent)
    stream = noise.gaussian(c["seed"], int(np.prod(shape)) * (c["steps"] + 1))
    latents = torch.from_numpy(stream[: np.prod(shape)].reshape(shape).copy())
    chunks = iter(torch.from_numpy(stream[np.prod(shape) * (i + 1): np.prod(shape) * (i + 2)].reshape(shape).copy())
                  for i in range(c["steps"]))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=c["spacing"])
    orig = scheduling_ddim.randn_tensor
    scheduling_ddim.randn_tensor = lambda *a, **k: next(chunks)
    try:
        out = pipe(c["prompt"], negative_prompt=c["negative_prompt"] or None, num_inference_steps=c["steps"],
                   guidance_scale=c["guidance_scale"], eta=c["eta"], latents=latents, output_type="np",
                   height=size, width=size).images
    finally:
        scheduling_ddim.randn_tensor = orig
    return torch.from_numpy(out[0]).permute(2, 0, 1).contiguous()  # CHW in [0, 1]


def main():
    import sys
    only = {"tiny-lcm": lcm, "tiny-upscale": tiny_upscaler, "emoji-upscaler": emoji_upscaler}
    if sys.argv[1:2] and sys.argv[1] in only:
        return only[sys.argv[1]]()
    pipe = build()
    save(pipe)
    images = {c["name"]: run(pipe, c) for c in CASES}
    save_file(images, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(CASES, f, indent=1)
    for k, v in images.items():
        print(k, tuple(v.shape), float(v.mean()), float(v.std()))

    lcm()

    emoji = StableDiffusionPipeline.from_pretrained(EMOJI_MODEL)
    emoji.set_progress_bar_config(disable=True)
    os.makedirs(EMOJI_OUT, exist_ok=True)
    images = {c["name"]: run(emoji, c, size=64) for c in EMOJI_CASES}
    save_file(images, os.path.join(EMOJI_OUT, "expected.safetensors"))
    with open(os.path.join(EMOJI_OUT, "cases.json"), "w") as f:
        json.dump(EMOJI_CASES, f, indent=1)
    for k, v in images.items():
        print(k, tuple(v.shape), float(v.mean()), float(v.std()))

    tiny_upscaler()
    if os.path.isdir(EMOJI_UPSCALER):
        emoji_upscaler()


if __name__ == "__main__":
    main()
