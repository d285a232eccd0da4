"""PyTorch/diffusers side of the full-size UNet benchmark (tools/bench_layouts.sh).

Loads the UNet of a folder written by examples/random_model.rs in float32,
feeds it the crate's seeded inputs (tools/noise.py: seed 1 for the 2×4×64×64
latents, seed 2 for the 2×77×D context, t = 999), times one call (mean of 2
after a warm-up) on the CPU, or on CUDA in f32 or f16, and prints JSON. When
the crate's bench has written <folder>/crate_unet_out.f32, its max difference
from diffusers' output is printed too (a full-size parity check).

    python tools/bench_layout_unet.py FOLDER [cpu|cuda] [f32|f16]
"""

import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
from diffusers import UNet2DConditionModel

sys.path.insert(0, os.path.dirname(__file__))
import noise  # noqa: E402

RUNS = 2


def main():
    folder = sys.argv[1]
    device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    precision = sys.argv[3] if len(sys.argv) > 3 else "f32"
    dtype = {"f32": torch.float32, "f16": torch.float16}[precision]
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), torch_dtype=dtype).to(device).eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    dim = unet.config.cross_attention_dim
    sample = torch.from_numpy(noise.latents(1, (2, 4, 64, 64))).to(device, dtype)
    ctx = torch.from_numpy(noise.latents(2, (2, 77, dim))).to(device, dtype)
    t = torch.tensor([999.0, 999.0], device=device)

    def call():
        with torch.no_grad():
            out = unet(sample, t, encoder_hidden_states=ctx).sample
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    out = call()
    times = []
    for _ in range(RUNS):
        s = time.perf_counter()
        call()
        times.append((time.perf_counter() - s) * 1e3)
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {"backend": f"torch {torch.__version__} {where} {precision}",
              "unet_ms": round(statistics.mean(times)), "load_ms": round(load_ms),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    ours = os.path.join(folder, "crate_unet_out.f32")
    if os.path.exists(ours):
        got = np.fromfile(ours, dtype="<f4")
        want = out.float().cpu().numpy().reshape(-1)
        if got.size == want.size:
            result["crate_max_abs_diff"] = float(np.abs(got - want).max())
            result["output_scale"] = float(np.abs(want).max())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
