"""Turns the 4-step student into a guidance-conditioned one (Meng et al. 2023,
"On distillation of guided diffusion models"): the guidance scale w becomes an
input of the UNet, so one pass per step still follows the prompt as closely as
the teacher at scale w, and a page can trade fidelity (high w) for variety
between seeds (low w).

The layout is diffusers' own: UNet2DConditionModel with `time_cond_proj_dim`
(a bias-free linear from the guidance embedding into the timestep embedding, as
in LCM). diffusers' StableDiffusionPipeline and this crate both feed it
`get_guidance_scale_embedding(guidance_scale - 1)` and skip the unconditional
pass, so `pipe(prompt, num_inference_steps=4, guidance_scale=w)` just works.

Training starts from the shipped student (the projection starts at zero, so
the first step is exactly today's model) and learns, in v-space MSE, the one
DDIM step on the 4-step trailing grid that lands where SUBSTEPS DDIM steps of
the teacher guided at w land; w is drawn per sample from [1, W_MAX]. The text
encoder, VAE and teacher are frozen.

    python tools/train/export.py --to-run www/models/emoji-4step tools/train/teacher-unet RUN
    python tools/train/distill_guidance.py WORK RUN --budget 3600 [--device cuda]

Wall-clock budgeted and resumable: every --save-every seconds (and at the end)
RUN/wstudent.safetensors, RUN/wstudent-opt.pt and meta.json are written; a
later call with the same RUN continues (learning rate and step count) until the
total budget is spent. export.py --unet wstudent writes the diffusers folder.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from safetensors.torch import load_file

import configs
import train


def guidance_embedding(w, dim):
    """diffusers' get_guidance_scale_embedding of (w - 1), as the pipeline feeds it."""
    return StableDiffusionPipeline.get_guidance_scale_embedding(None, w - 1, embedding_dim=dim)


def load_student(path, dev):
    unet = UNet2DConditionModel(**configs.UNET_W)
    state = load_file(path)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"time_embedding.cond_proj.weight"}, missing
    if missing:
        torch.nn.init.zeros_(unet.time_embedding.cond_proj.weight)
    return unet.to(dev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("run", help="train.py's output folder (export.py --to-run makes one from the repository)")
    ap.add_argument("--budget", type=float, default=3600, help="total wall-clock seconds over all calls")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--substeps", type=int, default=8, help="teacher DDIM steps per student step")
    ap.add_argument("--save-every", type=float, default=300)
    a = ap.parse_args()
    dev = torch.device(a.device)
    run = train.Run(argparse.Namespace(out=a.run, resume=None, device=a.device, budget=a.budget))
    meta = run.meta
    done_s, step = meta.get("wstudent_seconds", 0.0), meta.get("wstudent_steps", 0)
    if done_s >= a.budget:
        run.log(f"guidance distillation: budget of {a.budget:.0f}s already spent ({step} steps)")
        return
    run.log(f"guidance distillation on {a.device} ({torch.get_num_threads()} threads), batch {a.batch}, "
            f"{a.substeps} teacher steps per student step, w in [1, {configs.W_MAX}], "
            f"{done_s:.0f}/{a.budget:.0f}s done")

    data = np.load(os.path.join(a.work, "emoji64.npz"))
    tokens = np.load(os.path.join(a.work, "tokens.npz"))
    keep = ~data["heldout"]
    images = torch.from_numpy(data["images"][keep]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(dev)
    ids = torch.from_numpy(tokens["ids"][keep]).long().to(dev)
    empty = torch.from_numpy(tokens["empty"]).long().to(dev)
    lat = train.encode_all(run, train.load_vae(run), images)
    del images

    text = train.new_text_encoder()
    text.load_state_dict(load_file(run.find("text_encoder.safetensors")), strict=False)
    text = text.to(dev).eval()
    teacher = train.load_unet(run, "teacher.safetensors").eval()
    resumed = run.find("wstudent.safetensors")
    student = load_student(resumed or run.find("student.safetensors"), dev)
    opt = torch.optim.AdamW(student.parameters(), lr=a.lr, weight_decay=0.0)
    if resumed and os.path.exists(os.path.join(a.run, "wstudent-opt.pt")):
        opt.load_state_dict(torch.load(os.path.join(a.run, "wstudent-opt.pt")))
    ab = train.schedule(dev)
    T, n = len(ab), configs.STUDENT_STEPS
    k = T // n
    dim = configs.UNET_W["time_cond_proj_dim"]
    with torch.no_grad():
        unc_all = text(empty[None]).last_hidden_state

    gen = torch.Generator(device=dev).manual_seed(3 + step)
    start, last_save = time.time(), time.time()
    losses = []

    def save():
        now = time.time()
        total = done_s + (now - start)
        run.save("wstudent.safetensors", student.state_dict(), wstudent_seconds=total, wstudent_steps=step,
                 wstudent_batch=a.batch, wstudent_substeps=a.substeps, wstudent_lr=a.lr, w_max=configs.W_MAX)
        torch.save(opt.state_dict(), os.path.join(a.run, "wstudent-opt.pt.tmp"))
        os.replace(os.path.join(a.run, "wstudent-opt.pt.tmp"), os.path.join(a.run, "wstudent-opt.pt"))
        run.log(f"saved at step {step}, {total:.0f}s of {a.budget:.0f}s")

    while done_s + (time.time() - start) < a.budget:
        frac = (done_s + time.time() - start) / a.budget
        train.set_lr(opt, a.lr, frac, step, 20)
        idx = torch.randint(0, len(lat), (a.batch,), device=dev, generator=gen)
        x0 = lat[idx]
        t = (k - 1) + k * torch.randint(0, n, (a.batch,), device=dev, generator=gen)
        w = 1 + (configs.W_MAX - 1) * torch.rand(a.batch, device=dev, generator=gen)
        eps = torch.randn(x0.shape, device=dev, generator=gen)
        a_t, s_t = train.coefficients(ab, t)
        zt = a_t * x0 + s_t * eps
        tok = train.pick_ids(run, ids, empty, idx, gen)
        with torch.no_grad():
            cond = text(tok).last_hidden_state
            unc = unc_all.expand(a.batch, -1, -1)
            z, tt = zt, t
            sub = k // a.substeps
            for _ in range(a.substeps):
                vc, vu = teacher(torch.cat([z, z]), torch.cat([tt, tt]).clamp(min=0),
                                 torch.cat([cond, unc])).sample.chunk(2)
                v = vu + w[:, None, None, None] * (vc - vu)
                a_1, s_1 = train.coefficients(ab, tt)
                a_2, s_2 = train.coefficients(ab, tt - sub)
                z, tt = train.ddim(z, v, a_1, s_1, a_2, s_2), tt - sub
            v_target = train.v_target(zt, z, a_t, s_t, *train.coefficients(ab, t - k))
        v = student(zt, t, cond, timestep_cond=guidance_embedding(w, dim).to(dev)).sample
        loss = F.mse_loss(v, v_target)
        train.update(opt, loss, student.parameters())
        step += 1
        losses.append(loss.item())
        if step % 20 == 0:
            run.log(f"wstudent step {step} loss {np.mean(losses[-20:]):.5f} "
                    f"lr {opt.param_groups[0]['lr']:.2e} {(time.time() - start) / len(losses):.2f}s/step")
        if time.time() - last_save > a.save_every:
            save()
            last_save = time.time()
    save()
    json.dump(run.meta, open(run.meta_path, "w"), indent=1)
    run.log("guidance distillation done")


if __name__ == "__main__":
    main()
