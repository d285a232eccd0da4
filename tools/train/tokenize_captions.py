"""Tokenizes the captions of WORK/emoji64.npz with the real CLIP BPE files
(tests/fixtures/clip_tokenizer) into WORK/tokens.npz, so that training needs
no tokenizer. Each emoji gets prompts (the full caption, its name, a short
name, name + subgroup) so that short prompts like "pizza" work; with
--keywords four more from its CLDR keywords (name + three keywords, a list
of keywords, two keywords, one keyword: "kitty", "kitten pet"), drawn with a
fixed seed, so that synonyms and the words of unseen emoji mean something.

    python tools/train/tokenize_captions.py WORK [--keywords]

The shipped teacher was trained on the four plain variants.
"""

import argparse
import os
import re

import numpy as np
from transformers import CLIPTokenizer

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


def prompt_words(text):
    """The words of a prompt as prompts.json lists them: lower-case letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


def keyword_variants(name, keywords, rng):
    """Four prompts from an emoji's CLDR keywords (falls back to its name)."""
    kws = [k for k in keywords.split("|") if k] or [name]
    new = [k for k in kws if k not in name] or kws
    pick = lambda pool, n: [pool[i] for i in sorted(rng.choice(len(pool), min(n, len(pool)), replace=False))]  # noqa: E731
    return [", ".join([name] + pick(new, 3)), ", ".join(pick(kws, 4)), " ".join(pick(kws, 2)), pick(new, 1)[0]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--keywords", action="store_true", help="add the CLDR keyword variants")
    a = ap.parse_args()
    d = np.load(os.path.join(a.work, "emoji64.npz"))
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    prompts = [variants(c, s) for c, s in zip(d["captions"], d["subgroup"])]
    if a.keywords:
        rng = np.random.default_rng(0)
        prompts = [p + keyword_variants(p[1], k, rng) for p, k in zip(prompts, d["keywords"])]
    flat = [p for ps in prompts for p in ps]
    ids = tok(flat, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    empty = tok([""], padding="max_length", max_length=77, return_tensors="np").input_ids[0]
    ids = ids.reshape(len(prompts), len(prompts[0]), 77).astype(np.int32)
    out = os.path.join(a.work, "tokens.npz")
    np.savez_compressed(out, ids=ids, empty=empty.astype(np.int32), prompts=np.array(prompts))
    print(f"{ids.shape} -> {out}; e.g. {prompts[100]} / {prompts[2000]}")


if __name__ == "__main__":
    main()
