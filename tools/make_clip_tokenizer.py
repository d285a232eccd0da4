"""Writes a diffusers-layout CLIP tokenizer folder (vocab.json, merges.txt,
tokenizer_config.json, special_tokens_map.json) from the CLIP BPE merges that
ship in the PyPI wheel open_clip_torch (open_clip/bpe_simple_vocab_16e6.txt.gz,
MIT). The vocabulary is derived exactly as OpenAI's CLIP does: 256 byte
symbols, the same with "</w>", one entry per merge, then the two specials.

    python tools/make_clip_tokenizer.py OUT_DIR [path/to/bpe_simple_vocab_16e6.txt.gz]
"""

import gzip
import json
import os
import sys


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def find_bpe():
    import glob
    import site
    for d in site.getsitepackages():
        hits = glob.glob(os.path.join(d, "open_clip", "bpe_simple_vocab_16e6.txt.gz"))
        if hits:
            return hits[0]
    raise SystemExit("pass the path of bpe_simple_vocab_16e6.txt.gz (from the open_clip_torch wheel)")


def main():
    out = sys.argv[1]
    src = sys.argv[2] if len(sys.argv) > 2 else find_bpe()
    lines = gzip.open(src).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_syms = bytes_to_unicode()
    vocab = byte_syms + [s + "</w>" for s in byte_syms] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=1)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}, f, indent=1)
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    main()
