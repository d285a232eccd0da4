"""Exports a diffusers folder (default: the shipped www/models/emoji-4step) to
ONNX for the onnxruntime-web comparison (tools/bench_ort.mjs, issue 11): the
same weights, as f32, in three graphs with fixed shapes (batch 1, guidance 1,
the model's default size):

  text_encoder.onnx  input_ids int64 [1, 77]            -> last_hidden_state
  unet.onnx          sample [1, 4, h, w], timestep int64 [1],
                     encoder_hidden_states [1, 77, d]    -> noise/v prediction
                     (a UNet that takes the guidance scale as an input,
                     `time_cond_proj_dim`, gets the embedding of scale 1 as a
                     constant, as the pipelines feed it)
  vae_decoder.onnx   latents [1, 4, h, w]                -> image [1, 3, H, W]
                     (divides by the VAE's scaling_factor first, as the
                     pipeline does before decoding)

Each graph is checked against PyTorch on random inputs with onnxruntime
before it is written (max |diff| printed). The benchmark needs only the .onnx
files, not Python.

    python tools/export_onnx.py [model dir] [out dir]   (default out: target/onnx/<model>)

Needs tools/requirements-fixtures.txt plus onnx==1.23.1, onnxruntime==1.30.0
and onnxscript==0.7.2 (the versions it was run with).
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


class TextEncoder(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return self.m(input_ids=input_ids).last_hidden_state


class Unet(torch.nn.Module):
    GUIDANCE = 1.0

    def __init__(self, m):
        super().__init__()
        self.m = m
        dim = m.config.time_cond_proj_dim
        self.cond = None if dim is None else StableDiffusionPipeline.get_guidance_scale_embedding(
            None, torch.tensor([self.GUIDANCE - 1]), embedding_dim=dim)

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.m(sample, timestep, encoder_hidden_states, timestep_cond=self.cond, return_dict=False)[0]


class Decoder(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, latents):
        return self.m.decode(latents / self.m.config.scaling_factor, return_dict=False)[0]


def export(module, inputs, names, out_name, path):
    module.eval()
    with torch.no_grad():
        want = module(*inputs).numpy()
        torch.onnx.export(module, tuple(inputs), path, input_names=names, output_names=[out_name],
                          opset_version=17, dynamo=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0]
    diff = float(np.abs(got - want).max())
    print(f"{os.path.basename(path)}: {os.path.getsize(path) / 1e6:.1f} MB, onnxruntime vs torch max |diff| {diff:.2e}")
    if diff > 1e-3 * max(1.0, float(np.abs(want).max())):
        raise SystemExit(f"{path}: onnxruntime disagrees with PyTorch ({diff})")


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "www", "models", "emoji-4step")
    name = os.path.basename(os.path.normpath(folder))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target", "onnx", name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    side = unet.config.sample_size
    ids = torch.randint(0, text.config.vocab_size, (1, 77), dtype=torch.int64)
    export(TextEncoder(text), [ids], ["input_ids"], "last_hidden_state",
           os.path.join(out, "text_encoder.onnx"))
    sample = torch.randn(1, unet.config.in_channels, side, side)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim)
    export(Unet(unet), [sample, torch.tensor([999], dtype=torch.int64), ctx],
           ["sample", "timestep", "encoder_hidden_states"], "out_sample", os.path.join(out, "unet.onnx"))
    export(Decoder(vae), [torch.randn(1, vae.config.latent_channels, side, side)], ["latents"], "image",
           os.path.join(out, "vae_decoder.onnx"))
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump({"model": name, "latent_side": side, "image_side": side * vae_scale,
                   "latent_channels": vae.config.latent_channels, "context_dim": unet.config.cross_attention_dim,
                   "torch": torch.__version__, "onnxruntime": ort.__version__}, f, indent=1)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
