"""Writes tests/fixtures/schedulers.json and tests/fixtures/noise.json.

Reference: diffusers (see requirements-fixtures.txt). Each scheduler case
stores the diffusers scheduler_config.json, the inference timesteps, and for
every step the input sample, model output and variance noise with diffusers'
prev_sample and pred_original_sample, twice: from stock diffusers (f32
schedule, as users run it) and from diffusers' same code run in float64
(`*_f64`, the reference for our f64 schedules). Run from the repo root:

    python tools/make_scheduler_fixtures.py
"""

import itertools
import json
import os
from unittest import mock

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddim, scheduling_ddpm

import noise

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
SHAPE = (2, 2, 2, 3)


class _Float64Torch:
    """`torch` as diffusers' scheduler modules see it, with float32 meaning float64."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def make_f64(cls, config):
    """diffusers' own scheduler code, run with every float32 made float64: the
    reference for our f64 schedules (stock diffusers rounds its schedule to f32)."""
    module = scheduling_ddpm if cls is DDPMScheduler else scheduling_ddim
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with mock.patch.object(module, "torch", _Float64Torch()):
            return cls(**config)
    finally:
        torch.set_default_dtype(old)


def arr(t):
    return [float(np.float32(x)) for x in t.detach().numpy().reshape(-1)]


def arr64(t):
    return [float(x) for x in t.detach().numpy().reshape(-1)]


def run_case(name, cls, config, steps, eta=0.0, seed=0, model_scale=1.0):
    torch.manual_seed(seed)
    sched = cls(**config)
    if steps is not None:
        sched.set_timesteps(steps)
    stored_config = {"_class_name": cls.__name__, "_diffusers_version": diffusers.__version__,
                     **{k: v for k, v in sched.config.items() if not k.startswith("_")}}
    ref = make_f64(cls, config)
    assert ref.alphas_cumprod.dtype == torch.float64
    if steps is not None:
        ref.set_timesteps(steps)

    def step(s, model_output, t, sample, z):
        if cls is DDIMScheduler:
            return s.step(model_output, t, sample, eta=eta, variance_noise=z if eta > 0 else None)
        with mock.patch.object(scheduling_ddpm, "randn_tensor", lambda *a, **k: z):
            return s.step(model_output, t, sample)

    sample = torch.randn(SHAPE)
    own64 = sample.double()
    records = []
    for t in sched.timesteps:
        t = int(t)
        model_output = torch.randn(SHAPE) * model_scale
        z = torch.randn(SHAPE)
        rec = {"t": t, "sample": arr(sample), "model_output": arr(model_output)}
        if (cls is DDIMScheduler and eta > 0) or (cls is DDPMScheduler and t > 0):
            rec["variance_noise"] = arr(z)
        out = step(sched, model_output, t, sample, z)
        # The f64 reference, step-local on the same (f32) inputs.
        out64 = step(ref, model_output.double(), t, sample.double(), z.double())
        own64 = step(ref, model_output.double(), t, own64, z.double()).prev_sample
        rec["prev_sample"] = arr(out.prev_sample)
        rec["pred_original_sample"] = arr(out.pred_original_sample)
        rec["prev_sample_f64"] = arr64(out64.prev_sample)
        rec["pred_original_sample_f64"] = arr64(out64.pred_original_sample)
        records.append(rec)
        sample = out.prev_sample
    idx = sorted(set(list(range(0, len(sched.alphas_cumprod), 97)) + [len(sched.alphas_cumprod) - 1]))
    return {
        "name": name,
        "scheduler": cls.__name__,
        "config": stored_config,
        "num_inference_steps": steps,
        "eta": eta,
        "shape": list(SHAPE),
        "timesteps": [int(t) for t in sched.timesteps],
        "alphas_cumprod_at": idx,
        "alphas_cumprod": [float(sched.alphas_cumprod[i]) for i in idx],
        "alphas_cumprod_f64": [float(ref.alphas_cumprod[i]) for i in idx],
        "final_sample_f64": arr64(own64),
        "steps": records,
    }


def ddim_cases():
    cases = []
    step_counts = itertools.cycle([10, 7, 4, 13, 5, 1])
    seed = itertools.count(100)
    # Every schedule x spacing x prediction type, clip alternating.
    for i, (sched, spacing, pred) in enumerate(itertools.product(
            ["linear", "scaled_linear", "squaredcos_cap_v2"],
            ["leading", "trailing", "linspace"],
            ["epsilon", "v_prediction", "sample"])):
        n = next(step_counts)
        cfg = dict(beta_schedule=sched, timestep_spacing=spacing, prediction_type=pred,
                   clip_sample=(i % 2 == 0))
        if sched == "scaled_linear":
            cfg.update(beta_start=0.00085, beta_end=0.012)
        cases.append(run_case(f"ddim-{sched}-{spacing}-{pred}-n{n}", DDIMScheduler, cfg, n,
                              seed=next(seed)))
    # eta > 0 with supplied variance noise.
    for eta, pred, spacing in [(0.5, "epsilon", "leading"), (1.0, "epsilon", "trailing"),
                               (1.0, "v_prediction", "linspace"), (0.3, "sample", "leading")]:
        cases.append(run_case(f"ddim-eta{eta}-{pred}-{spacing}", DDIMScheduler,
                              dict(prediction_type=pred, timestep_spacing=spacing,
                                   clip_sample=False), 9, eta=eta, seed=next(seed)))
    # Stable Diffusion's own scheduler config (steps_offset 1, no alpha-to-one).
    sd = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    for n in [50, 3]:
        cases.append(run_case(f"ddim-sd15-n{n}", DDIMScheduler, sd, n, seed=next(seed)))
    cases.append(run_case("ddim-sd15-eta1-n8", DDIMScheduler, sd, 8, eta=1.0, seed=next(seed)))
    # Zero terminal SNR: v-prediction with trailing (as intended), and leading.
    for spacing, pred, eta in [("trailing", "v_prediction", 0.0), ("leading", "v_prediction", 1.0),
                               ("linspace", "sample", 0.0), ("leading", "epsilon", 0.0)]:
        cases.append(run_case(f"ddim-zerosnr-{spacing}-{pred}-eta{eta}", DDIMScheduler,
                              dict(rescale_betas_zero_snr=True, timestep_spacing=spacing,
                                   prediction_type=pred, beta_schedule="scaled_linear",
                                   beta_start=0.00085, beta_end=0.012, clip_sample=False),
                              6, eta=eta, seed=next(seed)))
    # Small clip range, odd T, trained betas.
    cases.append(run_case("ddim-clip-range-0.5", DDIMScheduler,
                          dict(clip_sample=True, clip_sample_range=0.5), 11, seed=next(seed)))
    cases.append(run_case("ddim-T100-leading-offset2", DDIMScheduler,
                          dict(num_train_timesteps=100, steps_offset=2), 9, seed=next(seed)))
    cases.append(run_case("ddim-T37-trailing", DDIMScheduler,
                          dict(num_train_timesteps=37, timestep_spacing="trailing"), 5, seed=next(seed)))
    sig = torch.sigmoid(torch.linspace(-6, 6, 200)) * (0.02 - 0.0001) + 0.0001
    cases.append(run_case("ddim-trained-betas-sigmoid", DDIMScheduler,
                          dict(num_train_timesteps=200, trained_betas=sig.tolist()), 7, seed=next(seed)))
    return cases


def ddpm_cases():
    cases = []
    seed = itertools.count(500)
    for sched, var, pred, spacing, n in [
        ("linear", "fixed_small", "epsilon", "leading", 10),
        ("scaled_linear", "fixed_small", "v_prediction", "trailing", 7),
        ("squaredcos_cap_v2", "fixed_large", "epsilon", "linspace", 9),
        ("sigmoid", "fixed_small_log", "sample", "leading", 5),
        ("laplace", "fixed_small", "v_prediction", "trailing", 6),
        ("linear", "fixed_large", "sample", "trailing", 13),
    ]:
        cfg = dict(beta_schedule=sched, variance_type=var, prediction_type=pred,
                   timestep_spacing=spacing, clip_sample=(pred != "v_prediction"))
        cases.append(run_case(f"ddpm-{sched}-{var}-{pred}-{spacing}-n{n}", DDPMScheduler, cfg, n,
                              seed=next(seed)))
    # The full ancestral chain, no set_timesteps (T = 40 keeps the fixture small).
    cases.append(run_case("ddpm-full-T40", DDPMScheduler, dict(num_train_timesteps=40), None,
                          seed=next(seed)))
    cases.append(run_case("ddpm-zerosnr-v-trailing", DDPMScheduler,
                          dict(rescale_betas_zero_snr=True, prediction_type="v_prediction",
                               timestep_spacing="trailing", clip_sample=False), 5, seed=next(seed)))
    cases.append(run_case("ddpm-leading-offset1", DDPMScheduler, dict(steps_offset=1), 4,
                          seed=next(seed)))
    return cases


def published_checks():
    """Sums from diffusers' own tests/schedulers/test_scheduler_ddim.py, recomputed."""
    n = 4 * 3 * 8 * 8
    sample = (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)
    noise_d = (torch.arange(n).flip(-1).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)
    base = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                beta_schedule="linear", clip_sample=True)
    out = {}
    for name, extra in [("no_noise", {}), ("v_prediction", {"prediction_type": "v_prediction"}),
                        ("set_alpha_to_one", {"set_alpha_to_one": True, "beta_start": 0.01}),
                        ("no_set_alpha_to_one", {"set_alpha_to_one": False, "beta_start": 0.01}),
                        ("with_noise", {})]:
        s = DDIMScheduler(**{**base, **extra})
        s.set_timesteps(10)
        x = sample.clone()
        ts = s.timesteps
        if name == "with_noise":
            ts = ts[8:]
            x = s.add_noise(x, noise_d, ts[:1])
        for t in ts:
            x = s.step(x * t / (t + 1), t, x, 0.0).prev_sample
        out[name] = {"sum": float(x.abs().sum()), "mean": float(x.abs().mean())}
    return out


def main():
    cases = ddim_cases() + ddpm_cases()
    doc = {"generator": "tools/make_scheduler_fixtures.py",
           "diffusers": diffusers.__version__, "torch": torch.__version__,
           "published": published_checks(), "cases": cases}
    with open(os.path.join(OUT, "schedulers.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    seeds = [0, 1, 42, 2**32 + 7, 2**64 - 1]
    with open(os.path.join(OUT, "noise.json"), "w") as f:
        json.dump({"generator": "tools/noise.py", "n": 64,
                   "streams": [{"seed": str(s), "values": [float(v) for v in noise.gaussian(s, 64)]}
                               for s in seeds]}, f)
    print(f"{len(cases)} scheduler cases written")


if __name__ == "__main__":
    main()
