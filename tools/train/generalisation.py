"""How well model folders draw emoji they never saw, split by why, with
standard errors and paired differences:

    python tools/train/generalisation.py WORK BEFORE AFTER [--seeds 4] [--json docs/model-generalisation.json]
        [--grid docs/emoji-unseen.png]

For each held-out emoji, images from its name (seeds = its index + 100000 * k,
k < --seeds; the student's defaults: 4 steps, guidance 1.5, eta 0) are scored
by evaluate.py's classifier (group and subgroup accuracy, averaged over seeds
per emoji). The held-out emoji fall in three sets:

  skin tone      a skin-tone variant of an emoji trained in another tone;
  seen words     every word of the name occurs in a training prompt;
  unseen words   some word of the name occurs in none.

The classifier's accuracy on the real images of the same emoji is each set's
ceiling. Standard errors are over emoji (n per set). The difference AFTER - BEFORE is
paired (same emoji, same seeds), so its standard error is that of the
per-emoji differences, much smaller than either accuracy's. --grid draws
BEFORE (top row) and AFTER (bottom) for GRID_NAMES, held-out emoji whose
names have a word no training prompt has, seed 0.
"""

import argparse
import json
import os

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

import evaluate as ev
from tokenize_captions import prompt_words, variants

STEPS, GUIDANCE, ETA = 4, ev.STUDENT_GUIDANCE, 0.0
GRID_NAMES = ["shark", "sheep", "crab", "mango", "saxophone", "socks", "ferry", "electric light bulb"]


def mean_se(a):
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work", help="folder with emoji64.npz and tokens.npz; evaluate.py's classifier is cached there")
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--grid", help="draw the before/after grid here")
    ap.add_argument("--labels", nargs=2, metavar=("BEFORE", "AFTER"), help="what the folders are, for the json")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    w = ev.load_work(a.work)
    data, prompts, g, s, held, x, clf = w.data, w.names, w.g, w.s, w.held, w.x, w.clf
    hidx = np.flatnonzero(held)
    seen = set()
    for c, sg in zip(data["captions"][~held], data["subgroup"][~held]):
        for p in variants(c, sg):
            seen.update(prompt_words(p))
    skin = np.array(["skin tone" in p for p in prompts[hidx]])
    covered = np.array([set(prompt_words(p)) <= seen for p in prompts[hidx]])
    sets = {"all": np.ones(len(hidx), bool), "skin tone": skin, "seen words": ~skin & covered,
            "unseen words": ~skin & ~covered}

    _, rg, rs = ev.score(clf, x[hidx])
    real = {"group": (rg == g[hidx]).numpy().astype(float), "subgroup": (rs == s[hidx]).numpy().astype(float)}
    ev.patch_ddim_variance()
    acc, rows = {}, []
    for which, folder in (("before", a.before), ("after", a.after)):
        pipe = StableDiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        if a.grid:
            rows.append(ev.generate(pipe, GRID_NAMES, [0] * len(GRID_NAMES), STEPS, GUIDANCE, ETA))
        gs, ss = [], []
        for k in range(a.seeds):
            im = ev.generate(pipe, prompts[hidx], hidx + 100000 * k, STEPS, GUIDANCE, ETA)
            _, pg, ps = ev.score(clf, ev.to_tensor(im))
            gs.append((pg == g[hidx]).numpy())
            ss.append((ps == s[hidx]).numpy())
        acc[which] = {"group": np.mean(gs, 0), "subgroup": np.mean(ss, 0)}

    labels = a.labels or (a.before, a.after)
    out = dict(before=labels[0], after=labels[1], seeds=a.seeds, steps=STEPS, guidance=GUIDANCE, eta=ETA, sets={})
    print(f"\n{a.seeds} seeds per emoji; mean ± standard error over emoji\n")
    print("| held-out emoji | n | group: real images | before | after | subgroup: real images | before | after | "
          "after - before (paired) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in sets.items():
        row = {"n": int(m.sum())}
        for k in ("group", "subgroup"):
            row[f"{k}_real"] = mean_se(real[k][m])
            row[f"{k}_before"] = mean_se(acc["before"][k][m])
            row[f"{k}_after"] = mean_se(acc["after"][k][m])
            row[f"{k}_diff"] = mean_se(acc["after"][k][m] - acc["before"][k][m])
        out["sets"][name] = row
        f = lambda p: f"{p[0]:.3f} ± {p[1]:.3f}"  # noqa: E731
        print(f"| {name} | {row['n']} | {row['group_real'][0]:.3f} | {f(row['group_before'])} | "
              f"{f(row['group_after'])} | {row['subgroup_real'][0]:.3f} | {f(row['subgroup_before'])} | "
              f"{f(row['subgroup_after'])} | {row['subgroup_diff'][0]:+.3f} ± {row['subgroup_diff'][1]:.3f} |")
    if a.grid:
        ev.save_grid(rows, a.grid)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
            fh.write("\n")


if __name__ == "__main__":
    main()
