"""Writes tests/fixtures/models/<name>/io_f16.safetensors: diffusers' (and
transformers') own float16 outputs for the committed tiny fixtures, from the
same weights and inputs as io.safetensors (whose outputs are float32).

The Rust f16 tests compare the crate's f16 path with the f32 reference and
with these: diffusers' f16 error is the yardstick for ours. PyTorch runs f16
on the CPU here (its kernels accumulate in f32, as GPUs do). Run from the
repo root after make_model_fixtures.py / make_clip_fixtures.py:

    python tools/make_f16_fixtures.py
"""

import os

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, LatentConsistencyModelPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "models")
H = torch.float16


def write(name, outputs, reference):
    d = os.path.join(OUT, name)
    save_file({k: v.float().contiguous() for k, v in outputs.items()}, os.path.join(d, "io_f16.safetensors"))
    for k, v in outputs.items():
        want = reference[k]
        err = float((v.float() - want).abs().max())
        print(f"{name} {k}: diffusers f16 vs f32 max abs diff {err:.3e} (scale {float(want.abs().max()):.3f})")


def unet(name):
    d = os.path.join(OUT, name)
    io = load_file(os.path.join(d, "io.safetensors"))
    model = UNet2DConditionModel.from_pretrained(d, torch_dtype=H).eval()
    kw = {}
    if "class_labels" in io:
        kw["class_labels"] = io["class_labels"].long()
    if "guidance_w" in io:
        emb = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, io["guidance_w"], embedding_dim=model.config.time_cond_proj_dim)
        kw["timestep_cond"] = emb.to(H)
    with torch.no_grad():
        out = model(io["sample"].to(H), io["timesteps"], encoder_hidden_states=io["encoder_hidden_states"].to(H),
                    **kw).sample
    write(name, {"out": out}, io)


def vae_kl():
    d = os.path.join(OUT, "vae_kl_tiny")
    io = load_file(os.path.join(d, "io.safetensors"))
    vae = AutoencoderKL.from_pretrained(d, torch_dtype=H).eval()
    with torch.no_grad():
        mean = vae.encode(io["image"].to(H)).latent_dist.mean
        decoded = vae.decode(io["latents"].to(H)).sample
    write("vae_kl_tiny", {"mean": mean, "decoded": decoded}, io)


def vae_tiny():
    d = os.path.join(OUT, "vae_tiny")
    io = load_file(os.path.join(d, "io.safetensors"))
    vae = AutoencoderTiny.from_pretrained(d, torch_dtype=H).eval()
    with torch.no_grad():
        enc = vae.encode(io["image"].to(H)).latents
        dec = vae.decode(io["latents"].to(H)).sample
    write("vae_tiny", {"latents_out": enc, "decoded": dec}, io)


def clip(name):
    d = os.path.join(OUT, name)
    io = load_file(os.path.join(d, "io.safetensors"))
    model = CLIPTextModel.from_pretrained(d, torch_dtype=H).eval()
    with torch.no_grad():
        out = model(io["input_ids"].long()).last_hidden_state
    write(name, {"last_hidden_state": out}, io)


if __name__ == "__main__":
    for n in ["unet_sd1_tiny", "unet_sd2_inpaint_tiny", "unet_lcm_tiny"]:
        unet(n)
    vae_kl()
    vae_tiny()
    clip("clip_text_quick_gelu")
    clip("clip_text_gelu")
