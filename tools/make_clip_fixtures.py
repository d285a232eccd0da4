"""Writes the CLIP fixtures: token ids from transformers' CLIPTokenizer for a
list of awkward prompts (tests/fixtures/clip_tokenizer/expected.json), and two
random-weight CLIPTextModel configs (quick_gelu and gelu) with inputs and
outputs (tests/fixtures/models/clip_text_*). Run from the repo root after
tools/make_clip_tokenizer.py:

    python tools/make_clip_fixtures.py
"""

import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

PROMPTS = [
    "a red heart",
    "A photo of an astronaut riding a horse on Mars.",
    "cat face",
    "PIZZA!!! with extra cheese, please :)",
    "it's a dog's life; they'll say I'd've known",
    "numbers 12345 and 3.14159 and 1,000,000",
    "café naïve résumé Ångström façade",
    "emoji 🍕🐱 ❤️ 👩‍🚀 and flags 🇯🇵",
    "   leading, trailing   and\tinner\nwhitespace runs   ",
    "",
    "日本語のテキスト and 中文 mixed",
    "<|startoftext|>already special<|endoftext|>",
    "hyphen-ated under_score slash/path back\\slash #hash @at $100 50% a&b",
    "Cafe\u0301 decomposed accent",
    " ".join(["very long prompt"] * 40),
]


def tokenizer_fixture():
    tok = CLIPTokenizer.from_pretrained(os.path.join(ROOT, "clip_tokenizer"))
    cases = []
    for p in PROMPTS:
        ids = tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        cases.append({"prompt": p, "ids": ids})
    with open(os.path.join(ROOT, "clip_tokenizer", "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "tools/make_clip_fixtures.py", "transformers": transformers.__version__,
                   "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"{len(cases)} tokenizer cases")


def text_model_fixture(name, act, seed):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, hidden_act=act,
                         layer_norm_eps=1e-5, projection_dim=16)
    model = CLIPTextModel(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.add_(torch.randn(p.shape) * 0.1)
            elif n.endswith("bias"):
                p.copy_(torch.randn(p.shape) * 0.1)
    d = os.path.join(ROOT, "models", name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 1000, (2, 16), generator=g)
    with torch.no_grad():
        out = model(ids).last_hidden_state
    save_file({"input_ids": ids.float().contiguous(), "last_hidden_state": out.contiguous()},
              os.path.join(d, "io.safetensors"))
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params")


if __name__ == "__main__":
    tokenizer_fixture()
    text_model_fixture("clip_text_quick_gelu", "quick_gelu", 7)
    text_model_fixture("clip_text_gelu", "gelu", 8)
