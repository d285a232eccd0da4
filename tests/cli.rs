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
        "1.5",
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

/// The shipped model's prompts.json: an emoji is read as its name (the same
/// image, byte for byte), and a prompt of words it never saw gets a note.
#[test]
fn emoji_prompts_read_as_names_and_unknown_words_are_noted() {
    let m = Path::new(env!("CARGO_MANIFEST_DIR")).join("www/models/emoji-4step");
    let run = |prompt: &str, name: &str| {
        let out = tmp(name);
        let o = cli(&[
            "--model",
            m.to_str().unwrap(),
            "--prompt",
            prompt,
            "--steps",
            "2",
            "--seed",
            "7",
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        (read_png(&out).0, err)
    };
    let (by_name, err) = run("cat face", "cat-name.png");
    assert!(!err.contains("note:"), "{err}");
    let (by_emoji, err) = run("🐱", "cat-emoji.png");
    assert!(
        err.contains(r#"note: the prompt is read as "cat face""#),
        "{err}"
    );
    assert!(
        by_name == by_emoji,
        "🐱 and \"cat face\" give different images"
    );
    let (other, _) = run("🐶", "dog-emoji.png");
    assert!(other != by_emoji, "🐶 gives the cat's image");
    let (_, err) = run("Katze und Hund", "unknown.png");
    assert!(
        err.contains("no word of the prompt is one this model was trained on"),
        "{err}"
    );
}

/// An upscaler folder as --model upscales --init (the fixture's 8×8 input).
#[test]
fn upscaler_model_upscales_init_like_diffusers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/tiny-upscale");
    let input = tmp("upscale-input.png");
    let rgba: Vec<u8> = (0..8u32 * 8 * 4)
        .map(|i| {
            let (c, x, y) = (i % 4, (i / 4) % 8, i / 32);
            ((x * 37 + y * 91 + c * 53) % 256) as u8
        })
        .collect();
    write_png(&input, &rgba, 8, 8);
    let args = [
        "--init",
        input.to_str().unwrap(),
        "--prompt",
        "cat face",
        "--seed",
        "6",
        "--steps",
        "2",
        "--eta",
        "1",
        "--guidance",
        "1",
        "--spacing",
        "trailing",
        "--noise-level",
        "150",
    ];
    check_against_diffusers(&dir, &dir, "upscale_eta1_trailing", &args, 16);
}

/// Generate with the shipped model, then upscale with the shipped upscaler
/// (--upscaler): 64×64 → 256×256, close to diffusers' upscale of diffusers'
/// image (the two 64×64 inputs differ by rounding, up to one level).
#[test]
fn shipped_model_then_upscaler_makes_256() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tmp("heart-x4.png");
    let o = cli(&[
        "--model",
        root.join("www/models/emoji-4step").to_str().unwrap(),
        "--upscaler",
        root.join("www/models/emoji-upscaler").to_str().unwrap(),
        "--prompt",
        "red heart",
        "--seed",
        "0",
        "--guidance",
        "1.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("upscaling 64×64"), "{err}");
    let (rgba, w, h) = read_png(&out);
    assert_eq!((w, h), (256, 256));
    let fixtures = root.join("tests/fixtures/pipelines/emoji-upscaler/expected.safetensors");
    let want = &common::f32_tensors(fixtures)["red_heart_x4"].1;
    let plane = 256 * 256;
    let mut total = 0.0f64;
    for i in 0..plane {
        for c in 0..3 {
            total += (rgba[i * 4 + c] as f64 - (want[c * plane + i] as f64 * 255.0)).abs();
        }
    }
    let mean = total / (3 * plane) as f64;
    assert!(mean <= 1.0, "mean difference {mean} levels");
    // An upscaler's options without --upscaler go to --model, which is no upscaler.
    let o = cli(&[
        "--model",
        root.join("www/models/emoji-4step").to_str().unwrap(),
        "--noise-level",
        "20",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an upscaler"));
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
        String::from_utf8_lossy(&o.stderr).contains("steps = 0 must be a whole number"),
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

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header claims `w × h` pixels and whose data holds almost none.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (
            *b"IHDR",
            [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 6, 0, 0, 0]].concat(),
        ),
        (
            *b"IDAT",
            vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ),
        (*b"IEND", vec![]),
    ] {
        out.extend((data.len() as u32).to_be_bytes());
        let body = [&kind[..], &data].concat();
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    out
}

#[test]
fn help_unknown_flags_and_bad_values() {
    let o = cli(&["--help"]);
    assert!(o.status.success(), "--help must succeed");
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--model", "--prompt", "--steps", "--init", "--mask", "--device", "--out",
    ] {
        assert!(help.contains(flag), "--help does not list {flag}:\n{help}");
    }
    let o = cli(&["--model", "m", "--out", "o.png", "--stpes", "3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unexpected argument '--stpes'"));
    let out = tmp("never.png");
    let m = model();
    for (flag, value, want) in [
        (
            "--steps",
            "-1",
            "steps = -1 must be a whole number from 1 to 1000",
        ),
        ("--steps", "NaN", "steps = NaN must be a whole number"),
        ("--seed", "-1", "seed = -1 must be a whole number"),
        (
            "--guidance",
            "abc",
            "guidance scale = \"abc\" must be between 0 and 50",
        ),
    ] {
        let o = cli(&[
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            flag,
            value,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flag} {value}: {err}");
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
    assert!(!out.exists());
}

#[test]
fn images_are_checked_before_they_are_decoded() {
    let out = tmp("never2.png");
    let m = model();
    let huge = tmp("huge.png");
    std::fs::write(&huge, png_claiming(100_000, 100_000)).unwrap();
    let not_png = tmp("not.png");
    std::fs::write(&not_png, b"GIF89a this is not a PNG").unwrap();
    let cut = tmp("cut.png");
    let mut small = png_claiming(16, 16);
    small.truncate(40);
    std::fs::write(&cut, small).unwrap();
    for (path, want) in [
        (
            &huge,
            "the image is 100000×100000; images up to 2048×2048 are accepted",
        ),
        (&not_png, "not a readable PNG image"),
        (&cut, "not a readable PNG image"),
    ] {
        let o = cli(&[
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--init",
            path.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "{}: {err}", path.display());
    }
    // A mask needs an image to inpaint.
    let o = cli(&[
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--mask",
        huge.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--init"));
}
