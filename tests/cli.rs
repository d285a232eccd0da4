//! The native CLI end to end on the tiny pipeline fixture and on the shipped
//! model: its PNG equals diffusers' image to within one 8-bit level; inpainting keeps the pixels
//! outside the mask exactly and changes the ones inside; bad input is a
//! clear error and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/tiny")
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_latent-diffusion"))
        .args(args)
        .output()
        .unwrap()
}

fn read_png(path: &Path) -> (Vec<u8>, u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    (buf, info.width, info.height)
}

fn write_png(path: &Path, rgba: &[u8], w: u32, h: u32) {
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(std::fs::File::create(path).unwrap()),
        w,
        h,
    );
    enc.set_color(png::ColorType::Rgba);
    enc.write_header().unwrap().write_image_data(rgba).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ldw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn generate_matches_diffusers_within_one_level() {
    let m = model();
    let args = [
        "--prompt",
        "a red heart",
        "--negative-prompt",
        "blurry",
        "--seed",
        "42",
        "--steps",
        "4",
        "--guidance",
        "3",
    ];
    check_against_diffusers(&m, &m, "guided_eta0", &args, 16);
}

/// The shipped model (www/models/emoji-4step) with the page's defaults.
#[test]
fn shipped_model_matches_diffusers_within_one_level() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let args = [
        "--prompt",
        "red heart",
        "--seed",
        "0",
        "--steps",
        "4",
        "--guidance",
        "1",
        "--spacing",
        "trailing",
    ];
    check_against_diffusers(
        &root.join("www/models/emoji-4step"),
        &root.join("tests/fixtures/pipelines/emoji-4step"),
        "red_heart",
        &args,
        64,
    );
}

fn check_against_diffusers(model: &Path, fixtures: &Path, case: &str, args: &[&str], size: u32) {
    let out = tmp(&format!("{case}.png"));
    let mut all = vec!["--model", model.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", out.to_str().unwrap()]);
    let o = cli(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (rgba, w, h) = read_png(&out);
    assert_eq!((w, h), (size, size));
    let want = &common::f32_tensors(fixtures.join("expected.safetensors"))[case].1;
    let plane = (size * size) as usize;
    for i in 0..plane {
        for c in 0..3 {
            let ref_level = (want[c * plane + i] * 255.0).round();
            assert!(
                (rgba[i * 4 + c] as f32 - ref_level).abs() <= 1.0,
                "{case}: pixel {i} channel {c}"
            );
        }
    }
}

#[test]
fn inpaint_keeps_unmasked_pixels_and_changes_masked_ones() {
    // A flat mid-grey image; repaint its left half.
    let (w, h) = (16u32, 16u32);
    let image: Vec<u8> = (0..w * h).flat_map(|_| [128, 64, 200, 255]).collect();
    let mask: Vec<u8> = (0..w * h)
        .flat_map(|i| if i % w < 8 { [255; 4] } else { [0, 0, 0, 255] })
        .collect();
    let (img_p, mask_p, out) = (tmp("img.png"), tmp("mask.png"), tmp("inpaint.png"));
    write_png(&img_p, &image, w, h);
    write_png(&mask_p, &mask, w, h);
    let m = model();
    let o = cli(&[
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "pizza",
        "--steps",
        "4",
        "--strength",
        "1",
        "--init",
        img_p.to_str().unwrap(),
        "--mask",
        mask_p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (rgba, ..) = read_png(&out);
    let mut changed = 0;
    for i in 0..(w * h) as usize {
        let px = &rgba[i * 4..i * 4 + 3];
        if i % w as usize >= 8 {
            assert_eq!(px, &image[i * 4..i * 4 + 3], "unmasked pixel {i} changed");
        } else if px != &image[i * 4..i * 4 + 3] {
            changed += 1;
        }
    }
    assert!(changed > 100, "only {changed} of 128 masked pixels changed");
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = tmp("bad.png");
    let o = cli(&[
        "--model",
        "/nonexistent/model",
        "--prompt",
        "x",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/model/unet/config.json"));
    let m = model();
    let o = cli(&[
        "--model",
        m.to_str().unwrap(),
        "--steps",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("steps = 0"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cli(&[
        "--model",
        m.to_str().unwrap(),
        "--width",
        "15",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("width = 15 must be a multiple of 2"));
}
