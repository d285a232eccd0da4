"""How much the seed changes an image: per-prompt diversity of a model folder
(student) and of its teacher, through diffusers' StableDiffusionPipeline.

    python tools/train/diversity.py WORK [--model DIR] [--teacher DIR]
        [--run teacher:50:3] [--run student:4:1] ... [--prompts 48] [--seeds 6]

For each prompt, SEEDS images (seeds 0..SEEDS-1, eta 0) are generated and
two distances are averaged over all pairs of seeds, then over prompts:
- pixels: mean absolute difference in 8-bit levels (0-255);
- features: L2 distance between the evaluation classifier's 128-d features
  (evaluate.py's classifier, cached in WORK).
Accuracy is the classifier's subgroup accuracy over all images of the held-out
prompts (the prompt's emoji as the label), so a diversity gain that loses the
prompt shows up here. Prompts: evaluate.GRID_PROMPTS, then held-out emoji names
until PROMPTS in all. A run is MODEL:STEPS:GUIDANCE; for a guidance-conditioned
student the guidance is its input, not a second pass.

Prints a Markdown table and, with --json, writes the numbers there.
"""

import argparse
import itertools
import json
import os
import time

import numpy as np
import torch

import evaluate

DEFAULT_RUNS = ["teacher:50:1", "teacher:50:2", "teacher:50:3", "student:4:1"]


def pairwise(x, dist):
    """Mean over pairs (i < j) of dist(x[i], x[j]): x is (seeds, ...)."""
    return float(np.mean([dist(x[i], x[j]) for i, j in itertools.combinations(range(len(x)), 2)]))


def mean_abs(a, b):
    return np.abs(a - b).mean()


def l2(a, b):
    return np.linalg.norm(a - b)


def measure(pipe, clf, prompts, labels, n_seeds, steps, guidance, eta=0.0):
    """(pixel diversity, feature diversity, subgroup accuracy on labelled prompts, seconds)."""
    t0 = time.time()
    flat = [p for p in prompts for _ in range(n_seeds)]
    seeds = [s for _ in prompts for s in range(n_seeds)]
    im = evaluate.generate(pipe, flat, seeds, steps, guidance, eta)
    feats, _, sub = evaluate.score(clf, evaluate.to_tensor(im))
    im = im.astype(np.float64).reshape(len(prompts), n_seeds, -1)
    feats = feats.reshape(len(prompts), n_seeds, -1)
    pix = float(np.mean([pairwise(im[i], mean_abs) for i in range(len(prompts))]))
    fea = float(np.mean([pairwise(feats[i], l2) for i in range(len(prompts))]))
    sub = sub.reshape(len(prompts), n_seeds).numpy()
    known = [i for i, lab in enumerate(labels) if lab is not None]
    acc = float(np.mean([(sub[i] == labels[i]).mean() for i in known])) if known else float("nan")
    return pix, fea, acc, time.time() - t0, im


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--model", default=os.path.join(evaluate.ROOT, "www", "models", "emoji-4step"))
    ap.add_argument("--teacher", default=os.path.join(evaluate.ROOT, "tools", "train", "teacher-unet"))
    ap.add_argument("--run", action="append", help="MODEL:STEPS:GUIDANCE (MODEL: teacher or student)")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    w = evaluate.load_work(a.work)
    names, s, held, clf = w.names, w.s, w.held, w.clf
    hidx = np.flatnonzero(held)
    prompts = list(evaluate.GRID_PROMPTS) + [str(names[i]) for i in hidx[:max(0, a.prompts - len(evaluate.GRID_PROMPTS))]]
    labels = [None] * len(evaluate.GRID_PROMPTS) + [int(s[i]) for i in hidx[:len(prompts) - len(evaluate.GRID_PROMPTS)]]
    evaluate.patch_ddim_variance()
    pipes = evaluate.pipelines(a.model, a.teacher)
    rows = []
    print("| model | steps | guidance | eta | pixel diversity (levels) | feature diversity | held-out subgroup acc | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in a.run or DEFAULT_RUNS:
        name, steps, guidance = run.split(":")
        pix, fea, acc, sec, _ = measure(pipes[name], clf, prompts, labels, a.seeds, int(steps), float(guidance), a.eta)
        rows.append(dict(model=name, steps=int(steps), guidance=float(guidance), eta=a.eta, pixel=pix, feature=fea,
                         heldout_subgroup_acc=acc, seconds=sec))
        print(f"| {name} | {steps} | {guidance} | {a.eta} | {pix:.2f} | {fea:.3f} | {acc:.3f} | {sec:.0f} |", flush=True)
    if a.json:
        meta = dict(prompts=len(prompts), seeds=a.seeds, heldout_prompts=sum(x is not None for x in labels),
                    model=a.model, teacher=a.teacher, rows=rows)
        with open(a.json, "w") as fh:
            json.dump(meta, fh, indent=1)


if __name__ == "__main__":
    main()
