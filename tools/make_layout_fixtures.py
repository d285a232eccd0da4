"""Writes tests/fixtures/layouts/<name>/expected.safetensors: diffusers /
transformers outputs of full-size random-weight folders of real model layouts
(BK-SDM-Tiny, SDXS-512-DreamShaper, SD-Turbo, LCM-Dreamshaper-v7), for
tests/layouts.rs.

The folders come from the crate itself (the keys its loaders ask for, f16
random weights from a hash, see tests/common/random_model.rs), so loading them
here with from_pretrained also checks that every key name and shape is what
diffusers expects: a missing or unexpected key fails this script. Run from the
repo root (needs ~12 GB of RAM and disk for the three folders):

    cargo run --release --example random_model -- tests/fixtures/layouts/sd-turbo /tmp/layouts/sd-turbo
    (likewise bk-sdm-tiny, sdxs-512-dreamshaper, lcm-dreamshaper-v7)
    python tools/make_layout_fixtures.py /tmp/layouts [name ...]
"""

import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(__file__))
import noise  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on mars"
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "layouts")


def load(cls, path, **kw):
    model, info = cls.from_pretrained(path, torch_dtype=torch.float32, output_loading_info=True, **kw)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{path}: keys differ from diffusers/transformers: {bad}")
    return model.eval()


LAYOUTS = ("bk-sdm-tiny", "sdxs-512-dreamshaper", "sd-turbo", "lcm-dreamshaper-v7")


def main(root, names=()):
    torch.set_grad_enabled(False)
    for name in names or LAYOUTS:
        d = os.path.join(root, name)
        tok = CLIPTokenizer.from_pretrained(os.path.join(d, "tokenizer"))
        ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        te = load(CLIPTextModel, os.path.join(d, "text_encoder"))
        hidden = te(ids).last_hidden_state
        dim = hidden.shape[-1]
        del te
        unet = load(UNet2DConditionModel, os.path.join(d, "unet"))
        sample = torch.from_numpy(noise.latents(1, (1, 4, 8, 8)))
        ctx = torch.from_numpy(noise.latents(2, (1, 77, dim)))
        out = unet(sample, torch.tensor([999.0]), encoder_hidden_states=ctx).sample
        del unet
        vae_dir = os.path.join(d, "vae")
        tiny = "AutoencoderTiny" in open(os.path.join(vae_dir, "config.json")).read()
        vae = load(AutoencoderTiny if tiny else AutoencoderKL, vae_dir)
        z = torch.from_numpy(noise.latents(3, (1, 4, 8, 8)))
        image = vae.decode(z / vae.config.scaling_factor).sample
        tensors = {
            "input_ids": ids.float(),
            "text_head": hidden[:, :8],
            "text_tail": hidden[:, 70:77],
            "unet_out": out,
            "image": image,
        }
        for k, v in tensors.items():
            assert torch.isfinite(v).all(), f"{name}: {k} is not finite"
        save_file({k: v.float().contiguous() for k, v in tensors.items()},
                  os.path.join(OUT, name, "expected.safetensors"))
        print(name, {k: (tuple(v.shape), float(v.abs().max())) for k, v in tensors.items()})
        print(name, "pad id", tok.pad_token_id, "ids", ids[0, :14].tolist())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
