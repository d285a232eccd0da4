"""Writes the model folder's prompts.json: what the page suggests and how emoji
characters are read, from the same metadata and split the training used.

    python tools/train/make_prompts.py WORK www/models/emoji-4step/prompts.json [WORDS_JSON]

WORK is prepare_data.py's work folder (the npm packages are fetched there once).
prompts.json holds:
  examples  prompts shown as chips (the model card's grid prompts)
  names     the names and short names of the emoji the model was trained on (not
            held out), for autocomplete; skin-tone variants are left out
  words     every word of every training prompt, lower case: a prompt with none
            of them is one the model cannot follow
  alike     (with WORDS_JSON, written by word_neighbours.py) every other word
            the text encoder reads as a trained one -> that word ("shark" ->
            "dolphin")
  emoji     every emoji character in the metadata (variation selector U+FE0F
            removed) -> its name, so "🐱" is read as "cat face"
"""
import hashlib
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from prepare_data import caption, fetch, metadata, norm  # noqa: E402
from tokenize_captions import prompt_words, variants  # noqa: E402

EXAMPLES = ["red heart", "cat face", "pizza", "grinning face", "rocket", "sun", "thumbs up", "frog",
            "crying face", "four leaf clover", "hot beverage", "ghost"]


def char(code):
    return "".join(chr(int(p, 16)) for p in code.split("-"))


def main():
    work, out = sys.argv[1], sys.argv[2]
    learned = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else {}
    dirs = fetch(work)
    table = metadata(dirs["meta"])
    assets = os.path.join(dirs["fluent"], "assets")
    trained = []
    for f in sorted(os.listdir(assets)):
        code = norm(f[:-5]) if f.endswith(".webp") else None
        if code in table and int(hashlib.sha256(code.encode()).hexdigest(), 16) % 10 != 0:
            trained.append(code)
    words, names = set(), set()
    for code in trained:
        info = table[code]
        for prompt in variants(caption(info), info[3]):
            words.update(prompt_words(prompt))
        if "skin tone" not in info[0]:
            names.update([info[0]] + [s for s in info[1] if re.fullmatch(r"[a-z][a-z ]+", s)])
    alike = {w: a for w, a in sorted(learned.get("read_as", {}).items()) if w not in words}
    emoji = {char(code): info[0] for code, info in sorted(table.items())}
    data = {"examples": EXAMPLES, "names": sorted(names), "words": sorted(words), "emoji": emoji}
    if alike:
        data["alike"] = alike
    unknown = [e for e in EXAMPLES if not set(e.split()) <= words]
    assert not unknown, unknown
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{len(trained)} trained emoji, {len(names)} names, {len(words)} words, {len(alike)} alike, "
          f"{len(emoji)} emoji -> {out}")


if __name__ == "__main__":
    main()
