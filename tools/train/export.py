"""Writes a diffusers pipeline folder (StableDiffusionPipeline layout, f16
weights, the real CLIP tokenizer files) from the outputs of train.py.

    python tools/train/export.py RUN_DIR OUT_DIR [--unet student|teacher]

The student UNet (4 DDIM steps) or the guidance-conditioned student of
distill_guidance.py (`--unet wstudent`, the shipped default) go into the folder;
the teacher can be exported the same way for evaluation.

The other way round, for continuing training on a new machine from what the
repository holds (f16-rounded weights):

    python tools/train/export.py --to-run www/models/emoji-4step tools/train/teacher-unet RUN_DIR

writes RUN_DIR/{vae,text_encoder,teacher,student}.safetensors and meta.json in
train.py's format, so `train.py WORK OUT --resume RUN_DIR` skips the phases
already done.
"""

import argparse
import json
import os
import shutil

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import configs

TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "clip_tokenizer")
WEIGHTS = [("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
           ("text_encoder", "model.safetensors")]


def load(run, unet_name):
    meta = json.load(open(os.path.join(run, "meta.json")))
    vae = AutoencoderKL(**configs.VAE, scaling_factor=meta["scaling_factor"])
    vae.load_state_dict(load_file(os.path.join(run, "vae.safetensors")))
    unet = UNet2DConditionModel(**(configs.UNET_W if unet_name == "wstudent" else configs.UNET))
    unet.load_state_dict(load_file(os.path.join(run, f"{unet_name}.safetensors")))
    text = CLIPTextModel(CLIPTextConfig(**configs.TEXT))
    state = load_file(os.path.join(run, "text_encoder.safetensors"))
    missing, unexpected = text.load_state_dict(state, strict=False)
    # Only the position-id buffer may differ between transformers versions.
    assert all("position_ids" in k for k in missing + unexpected), (missing, unexpected)
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tok, unet=unet.eval(),
                                   scheduler=DDIMScheduler(**configs.SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe, meta


def save(pipe, out):
    if os.path.isdir(out):
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    for sub, fname in WEIGHTS:
        state = getattr(pipe, sub).state_dict()
        save_file({k: v.half().contiguous() for k, v in state.items()}, os.path.join(out, sub, fname))
    tdir = os.path.join(out, "tokenizer")
    if os.path.exists(os.path.join(tdir, "tokenizer.json")):
        os.remove(os.path.join(tdir, "tokenizer.json"))  # transformers 5 writes only this; ship vocab + merges
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(TOKENIZER, f), os.path.join(tdir, f))


def to_run(folder, teacher_dir, run):
    os.makedirs(run, exist_ok=True)
    f32 = lambda path: {k: v.float().contiguous() for k, v in load_file(path).items()}  # noqa: E731
    save_file(f32(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")), os.path.join(run, "vae.safetensors"))
    save_file(f32(os.path.join(folder, "text_encoder", "model.safetensors")), os.path.join(run, "text_encoder.safetensors"))
    # A guidance-conditioned student (distill_guidance.py) goes back to where
    # that script resumes from.
    w_cond = json.load(open(os.path.join(folder, "unet", "config.json"))).get("time_cond_proj_dim") is not None
    save_file(f32(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")),
              os.path.join(run, "wstudent.safetensors" if w_cond else "student.safetensors"))
    save_file(f32(os.path.join(teacher_dir, "diffusion_pytorch_model.safetensors")), os.path.join(run, "teacher.safetensors"))
    scaling = json.load(open(os.path.join(folder, "vae", "config.json")))["scaling_factor"]
    with open(os.path.join(run, "meta.json"), "w") as f:
        json.dump({"scaling_factor": scaling, "student_steps": 4, "from": folder}, f, indent=1)
    print(f"wrote {run}: resume point with the 4-step student")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to-run", nargs=3, metavar=("FOLDER", "TEACHER_UNET_DIR", "RUN_DIR"))
    ap.add_argument("run", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--unet", default="student", choices=["student", "teacher", "wstudent"],
                    help="wstudent: the guidance-conditioned student of distill_guidance.py")
    a = ap.parse_args()
    if a.to_run:
        to_run(*a.to_run)
        return
    pipe, _ = load(a.run, a.unet)
    save(pipe, a.out)
    total = sum(os.path.getsize(os.path.join(a.out, s, f)) for s, f in WEIGHTS)
    print(f"wrote {a.out}: weights {total} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
