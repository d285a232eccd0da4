"""PyTorch/diffusers side of the forward benchmark (see tools/bench.sh).

Builds the benchmark UNet and AutoencoderKL with fixed random weights, saves
them in the diffusers layout under OUT_DIR (so the Rust bench loads the very
same weights), then times one UNet forward (batch 2: a guidance pair) and
one decoder forward on the CPU (or on CUDA, in f32 or f16) and prints JSON
with median milliseconds and peak resident memory. The saved weights are f32
either way.

    python tools/bench_forward.py OUT_DIR [cpu|cuda] [f32|f16]
"""

import json
import os
import resource
import statistics
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(64, 128, 128),
            layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=128, attention_head_dim=4, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(64, 128, 128), layers_per_block=1,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
           latent_channels=4, norm_num_groups=32, sample_size=64)
RUNS = 10


def timed(fn, device="cpu"):
    def run():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        run()
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    out = sys.argv[1]
    device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    precision = sys.argv[3] if len(sys.argv) > 3 else "f32"
    dtype = {"f32": torch.float32, "f16": torch.float16}[precision]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    unet.save_pretrained(os.path.join(out, "unet"))
    vae.save_pretrained(os.path.join(out, "vae"))
    unet, vae = unet.to(device, dtype), vae.to(device, dtype)
    sample = torch.randn(2, 4, 16, 16).to(device, dtype)
    ctx = torch.randn(2, 77, 128).to(device, dtype)
    latents = torch.randn(1, 4, 16, 16).to(device, dtype)
    with torch.no_grad():
        unet_ms = timed(lambda: unet(sample, 500, encoder_hidden_states=ctx), device)
        dec_ms = timed(lambda: vae.decode(latents), device)
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(json.dumps({"backend": f"pytorch {torch.__version__} {where} {precision}",
                      "unet_ms": unet_ms, "decoder_ms": dec_ms,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "unet_params": sum(p.numel() for p in unet.parameters()),
                      "vae_params": sum(p.numel() for p in vae.parameters())}))


if __name__ == "__main__":
    main()
