"""Writes tests/fixtures/models/<name>/: a diffusers/transformers config, random
weights (safetensors) and reference inputs/outputs, for the Rust parity tests.

Weights are rounded to the stored dtype first and the reference is computed
in float32 with the rounded values, so f16/bf16 files test the loader's
conversion while the outputs stay exact f32 references. Run from the repo root:

    python tools/make_model_fixtures.py                 # every fixture
    python tools/make_model_fixtures.py unet_lcm_tiny   # just that one
    python tools/make_model_fixtures.py vae_kl_tiled    # tiled decode on vae_kl_tiny
"""

import json
import os
import sys

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "models")


def randomize(model, seed):
    """Random weights everywhere, norms included, so no layer hides behind its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    return model


def save(name, model, config_file, weights_file, dtype, io):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(d, weights_file))
    with open(os.path.join(d, config_file), "w") as f:
        json.dump(dict(model.config), f, indent=1, default=list)
    save_file({k: v.float().contiguous() for k, v in io().items()}, os.path.join(d, "io.safetensors"))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params, {size / 1e6:.2f} MB")


def unet_case(name, seed, config, sample_shape, ctx_shape, timesteps, class_labels=None, dtype=torch.float16,
              guidance_w=None):
    torch.manual_seed(seed)
    model = randomize(UNet2DConditionModel(**config), seed).eval()

    def io():
        g = torch.Generator().manual_seed(seed + 1)
        sample = torch.randn(sample_shape, generator=g)
        ctx = torch.randn(ctx_shape, generator=g)
        t = torch.tensor(timesteps, dtype=torch.float32)
        kw = {"class_labels": torch.tensor(class_labels)} if class_labels is not None else {}
        if guidance_w is not None:
            # LCM: the pipelines embed w = guidance_scale - 1 this way.
            from diffusers import LatentConsistencyModelPipeline
            w = torch.tensor(guidance_w, dtype=torch.float32)
            kw["timestep_cond"] = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
                None, w, embedding_dim=config["time_cond_proj_dim"])
        with torch.no_grad():
            out = model(sample, t, encoder_hidden_states=ctx, **kw).sample
        tensors = {"sample": sample, "timesteps": t, "encoder_hidden_states": ctx, "out": out}
        if class_labels is not None:
            tensors["class_labels"] = torch.tensor(class_labels, dtype=torch.float32)
        if guidance_w is not None:
            tensors["guidance_w"] = torch.tensor(guidance_w, dtype=torch.float32)
        return tensors

    save(name, model, "config.json", "diffusion_pytorch_model.safetensors", dtype, io)


# SD 1.x layout: conv projections, heads from attention_head_dim.
SD1_TINY = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
    layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
    attention_head_dim=4, norm_num_groups=16,
)


def lcm_case():
    # LCM layout: the guidance-scale embedding through time_embedding.cond_proj
    # (no bias); an odd width checks the zero padding.
    unet_case("unet_lcm_tiny", 7, dict(SD1_TINY, time_cond_proj_dim=9),
              (2, 4, 8, 8), (2, 7, 32), [999.0, 259.0], guidance_w=[7.5, 0.0])


def tiled_case():
    """diffusers' tiled decode and encode on the committed vae_kl_tiny weights:
    4×4-latent tiles over 13×10 latents, and 8×8-pixel tiles over a 26×20
    image (uneven edges), written beside its io."""
    d = os.path.join(OUT, "vae_kl_tiny")
    vae = AutoencoderKL.from_pretrained(d).eval()
    vae.enable_tiling()
    vae.tile_latent_min_size = 4
    vae.tile_sample_min_size = 4 * 2
    g = torch.Generator().manual_seed(11)
    latents = torch.randn((1, 4, 13, 10), generator=g)
    image = torch.rand((1, 3, 26, 20), generator=g) * 2 - 1
    with torch.no_grad():
        tiled = vae.decode(latents).sample
        whole = vae.tiled_decode.__self__.decoder(vae.post_quant_conv(latents))
        tiled_mean = vae.encode(image).latent_dist.mean
        vae.disable_tiling()
        whole_mean = vae.encode(image).latent_dist.mean
    out = {"latents": latents, "tiled": tiled, "tile": torch.tensor([4.0]), "image": image,
           "tiled_mean": tiled_mean}
    save_file({k: v.float().contiguous() for k, v in out.items()}, os.path.join(d, "tiled.safetensors"))
    print("vae_kl_tiny tiled: max |tiled - whole| =", float((tiled - whole).abs().max()))
    print("vae_kl_tiny tiled encode: max |tiled - whole| =", float((tiled_mean - whole_mean).abs().max()))


def main():
    if sys.argv[1:] == ["unet_lcm_tiny"]:
        return lcm_case()
    if sys.argv[1:] == ["vae_kl_tiled"]:
        return tiled_case()
    lcm_case()
    # SD 1.x layout with class labels.
    unet_case("unet_sd1_tiny", 1, dict(SD1_TINY, num_class_embeds=5),
              (2, 4, 8, 8), (2, 7, 32), [999.0, 17.0], class_labels=[3, 0])
    # SD 2.x / inpainting layout: 9 input channels, linear projections, explicit
    # head counts per block, 2 transformer layers, odd latent size.
    unet_case("unet_sd2_inpaint_tiny", 2, dict(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=(16, 32, 32),
        layers_per_block=(1, 2, 1), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
        attention_head_dim=(2, 4, 4), use_linear_projection=True, transformer_layers_per_block=(2, 1, 1),
        norm_num_groups=8, flip_sin_to_cos=False, freq_shift=1, upcast_attention=True,
    ), (1, 9, 10, 6), (1, 5, 24), [421.0])

    torch.manual_seed(3)
    vae = randomize(AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=16, sample_size=16, scaling_factor=0.3,
    ), 3).eval()

    def vae_io():
        g = torch.Generator().manual_seed(4)
        image = torch.rand((1, 3, 16, 12), generator=g) * 2 - 1
        latents = torch.randn((1, 4, 5, 7), generator=g)
        with torch.no_grad():
            mean = vae.encode(image).latent_dist.mean
            decoded = vae.decode(latents).sample
        return {"image": image, "mean": mean, "latents": latents, "decoded": decoded}

    save("vae_kl_tiny", vae, "config.json", "diffusion_pytorch_model.safetensors", torch.bfloat16, vae_io)
    tiled_case()

    torch.manual_seed(5)
    taesd = randomize(AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16), decoder_block_out_channels=(16, 16, 16),
        num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), latent_channels=4,
    ), 5).eval()

    def taesd_io():
        g = torch.Generator().manual_seed(6)
        image = torch.rand((1, 3, 16, 16), generator=g) * 2 - 1
        latents = torch.randn((1, 4, 4, 4), generator=g) * 2
        with torch.no_grad():
            enc = taesd.encode(image).latents
            dec = taesd.decode(latents).sample
        return {"image": image, "latents_out": enc, "latents": latents, "decoded": dec}

    save("vae_tiny", taesd, "config.json", "diffusion_pytorch_model.safetensors", torch.float16, taesd_io)


if __name__ == "__main__":
    main()
