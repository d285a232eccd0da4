"""Tokenizes the captions of WORK/emoji64.npz with the real CLIP BPE files
(tests/fixtures/clip_tokenizer) into WORK/tokens.npz, so that training needs
no tokenizer. Each emoji gets VARIANTS prompts (the full caption, its name,
a short name, name + subgroup) so that short prompts like "pizza" work.

    python tools/train/tokenize_captions.py WORK
"""

import argparse
import os

import numpy as np
from transformers import CLIPTokenizer

VARIANTS = 4
TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "clip_tokenizer")


def variants(caption, subgroup):
    parts = [p.strip() for p in caption.split(",")]
    # caption = names..., subgroup, group; a skin-tone name carries ", <tone>".
    names = parts[:-2] if len(parts) > 2 else parts[:1]
    name = names[0]
    if len(names) > 1 and "skin tone" in names[1]:
        name = f"{names[0]}, {names[1]}"
    short = names[-1] if len(names) > 1 and "skin tone" not in names[-1] else name
    return [caption, name, short, f"{name}, {subgroup.replace('-', ' ')}"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    a = ap.parse_args()
    d = np.load(os.path.join(a.work, "emoji64.npz"))
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    prompts = [variants(c, s) for c, s in zip(d["captions"], d["subgroup"])]
    flat = [p for ps in prompts for p in ps]
    ids = tok(flat, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    empty = tok([""], padding="max_length", max_length=77, return_tensors="np").input_ids[0]
    ids = ids.reshape(len(prompts), VARIANTS, 77).astype(np.int32)
    out = os.path.join(a.work, "tokens.npz")
    np.savez_compressed(out, ids=ids, empty=empty.astype(np.int32), prompts=np.array(prompts))
    print(f"{ids.shape} -> {out}; e.g. {prompts[100]} / {prompts[2000]}")


if __name__ == "__main__":
    main()
