"""Evaluates the shipped emoji model against its teacher, repeatable by one command:

    python tools/train/evaluate.py WORK [--model www/models/emoji-4step] [--teacher tools/train/teacher-unet]

1. A small CNN classifier is trained (seeded, on CPU) on the real training
   images to predict each emoji's group and subgroup; its accuracy on the real
   held-out images is the ceiling for the scores below.
2. For every held-out emoji one image is generated from its name (the prompt a
   person would type, e.g. "red heart"), seed = its index, with diffusers'
   StableDiffusionPipeline loading the model folder: the runs in RUNS (teacher
   at 50 steps with and without guidance and at 4/2/1 steps; the
   guidance-conditioned student at 4 steps for several scales, and at 2/1),
   eta 0 and 1.
3. Scores: the classifier's group / subgroup accuracy against the prompt's
   emoji, and the Frechet distance between classifier features (the 128-d
   pooled layer) of the generated images and of the real held-out images. The
   same distance between the real training and held-out images is the floor.

Writes docs/model-eval.json, prints a Markdown table, and draws
docs/emoji-grid.png (student at STUDENT_GUIDANCE, prompts x seeds) and docs/emoji-compare.png
(teacher 50 / student 4 / teacher 4 steps, same seed).
"""

import argparse
import json
import os
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from scipy import linalg

import configs

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
GRID_PROMPTS = ["red heart", "cat face", "pizza", "grinning face", "rocket", "sun", "thumbs up", "frog",
                "crying face", "four leaf clover", "hot beverage", "ghost"]
# (model, steps, guidance): the teacher at 50 steps with and without
# guidance, at few steps to show what distillation buys, and the student.
# The student is guidance-conditioned (distill_guidance.py): its guidance is an
# input, one UNet pass per step at any scale; STUDENT_GUIDANCE is the default
# of the page and the CLI examples.
STUDENT_GUIDANCE = 1.5
RUNS = [("teacher", 50, configs.TEACHER_GUIDANCE), ("teacher", 50, 1.0), ("teacher", 4, configs.TEACHER_GUIDANCE),
        ("teacher", 2, configs.TEACHER_GUIDANCE), ("teacher", 1, configs.TEACHER_GUIDANCE),
        ("student", 4, 1.0), ("student", 4, 1.5), ("student", 4, 2.0), ("student", 4, 3.0),
        ("student", 2, STUDENT_GUIDANCE), ("student", 1, STUDENT_GUIDANCE)]


class Classifier(nn.Module):
    def __init__(self, groups, subgroups):
        super().__init__()
        chans = [3, 32, 64, 128, 128]
        layers = [nn.AvgPool2d(2)]  # 32x32 is plenty to tell emoji apart, and 4x cheaper
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        self.group = nn.Linear(128, groups)
        self.subgroup = nn.Linear(128, subgroups)

    def features(self, x):
        return self.body(x).mean((2, 3))

    def forward(self, x):
        f = self.features(x)
        return self.group(f), self.subgroup(f)


def to_tensor(images):
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_classifier(path, x, g, s, n_groups, n_subgroups, epochs=30):
    torch.manual_seed(0)
    model = Classifier(n_groups, n_subgroups)
    if os.path.exists(path):
        model.load_state_dict(torch.load(path))
        return model.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        xb = x[idx]
        # shifts of up to 4 px and mild colour jitter, so that generated images
        # are not judged on pixel-exact placement
        dx, dy = torch.randint(-4, 5, (2,), generator=gen).tolist()
        xb = torch.roll(xb, (dy, dx), (2, 3))
        xb = (xb * (1 + 0.1 * (torch.rand(len(xb), 3, 1, 1, generator=gen) - 0.5))).clamp(-1, 1)
        lg, ls = model(xb)
        loss = F.cross_entropy(lg, g[idx]) + F.cross_entropy(ls, s[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0:
            print(f"classifier step {step}/{steps} loss {loss.item():.3f}", flush=True)
    model.eval()
    torch.save(model.state_dict(), path)
    return model


def load_work(work):
    """WORK's emoji: `data` (emoji64.npz), `names` (the prompt a person would
    type, e.g. "red heart"), group and subgroup labels `g` and `s`, the
    held-out mask `held`, the images `x` as a tensor, and the evaluation
    classifier `clf` (trained on the training images once, cached in WORK)."""
    data = np.load(os.path.join(work, "emoji64.npz"))
    names = np.load(os.path.join(work, "tokens.npz"))["prompts"][:, 1]
    groups, subgroups = sorted(set(data["group"])), sorted(set(data["subgroup"]))
    g = torch.tensor([groups.index(v) for v in data["group"]])
    s = torch.tensor([subgroups.index(v) for v in data["subgroup"]])
    held = data["heldout"]
    x = to_tensor(data["images"])
    t0 = time.time()
    clf = train_classifier(os.path.join(work, "classifier.pt"), x[~held], g[~held], s[~held], len(groups),
                           len(subgroups))
    print(f"classifier ready in {time.time() - t0:.0f}s")
    return SimpleNamespace(data=data, names=names, groups=groups, subgroups=subgroups, g=g, s=s, held=held, x=x,
                           clf=clf)


@torch.no_grad()
def score(model, x):
    feats, gs, ss = [], [], []
    for i in range(0, len(x), 128):
        f = model.features(x[i:i + 128])
        feats.append(f)
        gs.append(model.group(f).argmax(1))
        ss.append(model.subgroup(f).argmax(1))
    return torch.cat(feats).double().numpy(), torch.cat(gs), torch.cat(ss)


def frechet(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(c1 @ c2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean.real))


def patch_ddim_variance():
    """Stock diffusers' f32 DDIM computes sqrt(1 - a_prev - std^2) with std =
    eta * sqrt(variance); from t = 1023 of this near-zero-SNR schedule that value
    is 0 in exact arithmetic and rounds below zero at eta = 1 (NaN images). The
    crate clamps it at 0 in f64; here the variance is scaled by (1 - 1e-6) for
    the same effect."""
    orig = DDIMScheduler._get_variance

    def variance(self, timestep, prev_timestep):
        return orig(self, timestep, prev_timestep) * (1 - 1e-6)

    DDIMScheduler._get_variance = variance


def pipelines(model_dir, teacher_dir):
    student = StableDiffusionPipeline.from_pretrained(model_dir)
    teacher = StableDiffusionPipeline.from_pretrained(model_dir)
    teacher.unet = UNet2DConditionModel.from_pretrained(teacher_dir)
    for p in (student, teacher):
        p.set_progress_bar_config(disable=True)
    return {"student": student, "teacher": teacher}


def generate(pipe, prompts, seeds, steps, guidance, eta, batch=64):
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch]]
        im = pipe(list(prompts[i:i + batch]), num_inference_steps=steps, guidance_scale=guidance, eta=eta,
                  generator=gens, output_type="np", height=configs.IMAGE_SIZE, width=configs.IMAGE_SIZE).images
        out.append((im * 255).round().astype(np.uint8))
    return np.concatenate(out)


def passes(pipe, guidance):
    """UNet passes per step: two with classifier-free guidance, one when the
    UNet takes the guidance scale as an input (as diffusers decides)."""
    return 2 if guidance > 1 and pipe.unet.config.time_cond_proj_dim is None else 1


def save_grid(rows, path, scale=2):
    grid = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    print("wrote", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work", help="folder with emoji64.npz and tokens.npz; the classifier is cached there")
    ap.add_argument("--model", default=os.path.join(ROOT, "www", "models", "emoji-4step"))
    ap.add_argument("--teacher", default=os.path.join(ROOT, "tools", "train", "teacher-unet"))
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N held-out emoji (smoke test)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    w = load_work(a.work)
    prompts, groups, subgroups, g, s, held, x, clf = w.names, w.groups, w.subgroups, w.g, w.s, w.held, w.x, w.clf

    hidx = np.flatnonzero(held)
    if a.limit:
        hidx = hidx[:a.limit]
    real_f, real_g, real_s = score(clf, x[hidx])
    rng = np.random.default_rng(0)
    train_f, _, _ = score(clf, x[rng.choice(np.flatnonzero(~held), len(hidx), replace=False)])
    results = [dict(model="real held-out images", steps=None, eta=None, guidance=None, unet_evals=None,
                    group_acc=float((real_g == g[hidx]).float().mean()),
                    subgroup_acc=float((real_s == s[hidx]).float().mean()),
                    frechet=frechet(train_f, real_f), seconds=None)]
    patch_ddim_variance()
    pipes = pipelines(a.model, a.teacher)
    for name, steps, guidance in RUNS:
        for eta in (0.0, 1.0):
            t0 = time.time()
            im = generate(pipes[name], prompts[hidx], hidx, steps, guidance, eta)
            f, pg, ps = score(clf, to_tensor(im))
            results.append(dict(model=name, steps=steps, eta=eta, guidance=guidance,
                                unet_evals=steps * passes(pipes[name], guidance),
                                group_acc=float((pg == g[hidx]).float().mean()),
                                subgroup_acc=float((ps == s[hidx]).float().mean()),
                                frechet=frechet(f, real_f), seconds=time.time() - t0))
            print(json.dumps(results[-1]), flush=True)

    os.makedirs(a.docs, exist_ok=True)
    if not a.limit:
        meta = dict(held_out=len(hidx), groups=len(groups), subgroups=len(subgroups),
                    prompt="the emoji's name (e.g. 'red heart'), seed = index of the emoji",
                    floor="'real held-out images' row: classifier accuracy on real held-out images; its "
                          "frechet is between 338 real training and the real held-out images",
                    results=results)
        with open(os.path.join(a.docs, "model-eval.json"), "w") as fh:
            json.dump(meta, fh, indent=1)
    print("\n| model | steps | eta | guidance | UNet evals | group acc | subgroup acc | Frechet distance |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['steps'] or '-'} | {'-' if r['eta'] is None else r['eta']} | "
              f"{r['guidance'] or '-'} | {r['unet_evals'] or '-'} | {r['group_acc']:.3f} | "
              f"{r['subgroup_acc']:.3f} | {r['frechet']:.2f} |")

    seeds = [0, 1, 2, 3]
    rows = [generate(pipes["student"], [p] * len(seeds), seeds, 4, STUDENT_GUIDANCE, 0.0) for p in GRID_PROMPTS]
    save_grid([np.concatenate(rows[i:i + 3], 0) for i in range(0, len(rows), 3)],
              os.path.join(a.docs, "emoji-grid.png"))
    seeds = list(range(len(GRID_PROMPTS)))
    save_grid([generate(pipes["teacher"], GRID_PROMPTS, seeds, 50, configs.TEACHER_GUIDANCE, 0.0),
               generate(pipes["student"], GRID_PROMPTS, seeds, 4, STUDENT_GUIDANCE, 0.0),
               generate(pipes["teacher"], GRID_PROMPTS, seeds, 4, configs.TEACHER_GUIDANCE, 0.0)],
              os.path.join(a.docs, "emoji-compare.png"))


if __name__ == "__main__":
    main()
