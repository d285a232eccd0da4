"""PyTorch/diffusers side of the forward benchmark (see tools/bench.sh).

Builds the benchmark UNet and AutoencoderKL with fixed random weights, saves
them in the diffusers layout under OUT_DIR (so the Rust bench loads the very
same weights), then times one UNet forward (batch 2: a guidance pair) and
one decoder forward on the CPU and prints JSON with median milliseconds and
peak resident memory.

    python tools/bench_forward.py OUT_DIR
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


def timed(fn):
    for _ in range(2):
        fn()
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    unet.save_pretrained(os.path.join(out, "unet"))
    vae.save_pretrained(os.path.join(out, "vae"))
    sample = torch.randn(2, 4, 16, 16)
    ctx = torch.randn(2, 77, 128)
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        unet_ms = timed(lambda: unet(sample, 500, encoder_hidden_states=ctx))
        dec_ms = timed(lambda: vae.decode(latents))
    print(json.dumps({"backend": f"pytorch {torch.__version__} cpu ({torch.get_num_threads()} threads)",
                      "unet_ms": unet_ms, "decoder_ms": dec_ms,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "unet_params": sum(p.numel() for p in unet.parameters()),
                      "vae_params": sum(p.numel() for p in vae.parameters())}))


if __name__ == "__main__":
    main()
