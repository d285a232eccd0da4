"""diffusers side of the generation benchmark (see tools/bench.sh): the
shipped model (www/models/emoji-4step) in StableDiffusionPipeline, prompts
"red heart" / "blue car" by seed, 4 DDIM steps, guidance 1, 64x64, image
returned as numpy; median of 10 runs after 2 warm-ups, seeds 0..9. Prints JSON.

    python tools/bench_generate.py [model dir]
"""

import json
import os
import statistics
import sys
import time

import torch
from diffusers import StableDiffusionPipeline

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "www", "models", "emoji-4step")
    t = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    load_ms = (time.perf_counter() - t) * 1e3
    pipe.set_progress_bar_config(disable=True)

    def once(seed):
        # Alternated as in benches/generate.rs (which would otherwise reuse
        # the last prompt's embedding).
        pipe(["red heart", "blue car"][seed % 2], num_inference_steps=4, guidance_scale=1.0, output_type="np",
             generator=torch.Generator().manual_seed(seed))

    for s in range(2):
        once(s)
    times = []
    for s in range(10):
        t = time.perf_counter()
        once(s)
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"backend": f"diffusers (pytorch {torch.__version__} cpu, {torch.get_num_threads()} threads)",
                      "load_ms": load_ms, "generate_ms": statistics.median(times)}))


if __name__ == "__main__":
    main()
