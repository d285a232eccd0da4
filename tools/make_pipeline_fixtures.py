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

Also writes tests/fixtures/pipelines/emoji-4step/{expected.safetensors,cases.json}:
the same comparison for the shipped model in www/models/emoji-4step/.

    python tools/make_pipeline_fixtures.py            # all of them
    python tools/make_pipeline_fixtures.py tiny-lcm   # just that one
"""

import json
import os
import shutil

import numpy as np
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, LatentConsistencyModelPipeline, LCMScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
from diffusers.schedulers import scheduling_ddim, scheduling_lcm
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
    if sys.argv[1:] == ["tiny-lcm"]:
        return lcm()
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


if __name__ == "__main__":
    main()
