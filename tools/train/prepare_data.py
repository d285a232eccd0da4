"""Builds the emoji training set from packages on the npm registry.

Images: @lobehub/fluent-emoji-3d@1.1.0 (MIT): 3391 WebP, 256x256, RGBA.
Names and groups: emoji-datasource@16.0.0 (MIT): emoji.json.
Keywords: Unicode CLDR 48 English annotations (cldr-annotations-full and
cldr-annotations-derived-full@48.2.0, Unicode licence), e.g. "cat face":
animal, cat, face, kitten, kitty, pet.
Each image is composited on white, resized to SIZE x SIZE (box filter), and
captioned from the emoji's name, short names, subgroup and group. A fixed
10% (by a hash of the code points) is held out for evaluation.

    python tools/train/prepare_data.py WORK_DIR [--size 64]

writes WORK_DIR/emoji{SIZE}.npz: images (N, S, S, 3) uint8, codes, captions,
group, subgroup, keywords ('|'-joined), heldout (bool).
"""

import argparse
import hashlib
import json
import os
import subprocess
import tarfile

import numpy as np
from PIL import Image

PACKAGES = {"fluent": "@lobehub/fluent-emoji-3d@1.1.0", "meta": "emoji-datasource@16.0.0",
            "cldr": "cldr-annotations-full@48.2.0", "cldr_derived": "cldr-annotations-derived-full@48.2.0"}
SKIN = {"1f3fb": "light skin tone", "1f3fc": "medium-light skin tone", "1f3fd": "medium skin tone",
        "1f3fe": "medium-dark skin tone", "1f3ff": "dark skin tone"}


def fetch(work):
    """npm pack each package once into WORK/npm and unpack it."""
    out = {}
    for key, spec in PACKAGES.items():
        d = os.path.join(work, "npm", key)
        if not os.path.isdir(os.path.join(d, "package")):
            os.makedirs(d, exist_ok=True)
            name = subprocess.check_output(["npm", "pack", spec, "--silent"], cwd=d, text=True).strip().splitlines()[-1]
            with tarfile.open(os.path.join(d, name)) as t:
                t.extractall(d, filter="data")
        out[key] = os.path.join(d, "package")
    return out


def metadata(meta_dir):
    """code points (lowercase, '-'-joined, no fe0f) -> (name, short names, group, subgroup)."""
    table = {}
    for e in json.load(open(os.path.join(meta_dir, "emoji.json"))):
        info = (e["name"].lower(), [s.replace("_", " ").replace("-", " ") for s in e["short_names"]], e["category"], e["subcategory"])
        table[norm(e["unified"])] = info
        for tone, var in (e.get("skin_variations") or {}).items():
            tones = " and ".join(SKIN.get(t, "") for t in tone.lower().split("-"))
            table[norm(var["unified"])] = (f"{info[0]}, {tones}", info[1], info[2], info[3])
    return table


def cldr_keywords(dirs):
    """emoji string (without U+FE0F) -> CLDR English keywords."""
    table = {}
    for key, sub in (("cldr_derived", "annotationsDerived"), ("cldr", "annotations")):
        path = os.path.join(dirs[key], sub, "en", "annotations.json")
        for ch, entry in json.load(open(path))[sub]["annotations"].items():
            table[ch.replace("\ufe0f", "")] = entry.get("default", [])
    return table


def norm(code):
    return "-".join(p for p in code.lower().split("-") if p != "fe0f")


def caption(info):
    name, shorts, group, subgroup = info
    words = [name] + [s for s in shorts if s not in name]
    return f"{', '.join(words)}, {subgroup.replace('-', ' ')}, {group.lower()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    dirs = fetch(a.work)
    table = metadata(dirs["meta"])
    kw_table = cldr_keywords(dirs)
    assets = os.path.join(dirs["fluent"], "assets")
    images, codes, captions, groups, subgroups, keywords = [], [], [], [], [], []
    missing = 0
    for f in sorted(os.listdir(assets)):
        if not f.endswith(".webp"):
            continue
        code = norm(f[:-5])
        info = table.get(code)
        if info is None:
            missing += 1
            continue
        im = Image.open(os.path.join(assets, f)).convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im).convert("RGB").resize((a.size, a.size), Image.BOX)
        images.append(np.asarray(im, dtype=np.uint8))
        codes.append(code)
        captions.append(caption(info))
        groups.append(info[2])
        subgroups.append(info[3])
        keywords.append("|".join(kw_table.get("".join(chr(int(p, 16)) for p in code.split("-")), [])))
    heldout = np.array([int(hashlib.sha256(c.encode()).hexdigest(), 16) % 10 == 0 for c in codes])
    path = os.path.join(a.work, f"emoji{a.size}.npz")
    np.savez_compressed(path, images=np.stack(images), codes=np.array(codes), captions=np.array(captions),
                        group=np.array(groups), subgroup=np.array(subgroups), keywords=np.array(keywords),
                        heldout=heldout)
    print(f"{len(images)} images ({heldout.sum()} held out), {missing} without metadata, "
          f"{sum(not k for k in keywords)} without CLDR keywords -> {path}")
    for i in range(0, len(captions), len(captions) // 5):
        print("  ", codes[i], "|", captions[i], "|", keywords[i])


if __name__ == "__main__":
    main()
