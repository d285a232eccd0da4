//! Images between RGBA bytes and `[1, C, H, W]` tensors in [-1, 1].

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};

/// RGBA bytes (row-major, 4 per pixel) → `[1, 3, H, W]` in [-1, 1].
pub fn rgba_to_tensor(
    rgba: &[u8],
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    let v = rgba_to_values(rgba, width, height)?;
    Ok(Tensor::from_data(
        TensorData::new(v, [1, 3, height, width]),
        device,
    ))
}

/// RGBA bytes → CHW values in [-1, 1].
fn rgba_to_values(rgba: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
    check_len("image", rgba, width, height)?;
    let plane = width * height;
    let mut v = vec![0f32; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            v[c * plane + i] = rgba[i * 4 + c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(v)
}

/// RGBA bytes of a mask → `[1, 1, H, W]` in [0, 1]: 1 where the red channel is
/// white (repaint), 0 where black (keep).
pub fn mask_to_tensor(
    rgba: &[u8],
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    check_len("mask", rgba, width, height)?;
    let v: Vec<f32> = rgba.chunks_exact(4).map(|p| p[0] as f32 / 255.0).collect();
    Ok(Tensor::from_data(
        TensorData::new(v, [1, 1, height, width]),
        device,
    ))
}

/// The forward process on an RGBA image in pixel space: x₀ in [-1, 1],
/// `x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε` (ε the seeded stream over the CHW values),
/// back to RGBA (clamped).
pub fn add_noise_rgba(
    schedule: &crate::NoiseSchedule,
    rgba: &[u8],
    width: usize,
    height: usize,
    timestep: usize,
    seed: u64,
) -> Result<Vec<u8>> {
    let x0 = rgba_to_values(rgba, width, height)?;
    let x_t = schedule.add_noise_seeded(&x0, timestep, seed)?;
    tensor_values_to_rgba(&x_t, width, height)
}

/// `[1, 3, H, W]` values in about [-1, 1] (CHW, as read back) → RGBA bytes,
/// with diffusers' rounding: `round(clamp(x / 2 + 0.5, 0, 1) · 255)`.
///
/// Non-finite values (an f16 overflow, a broken checkpoint) are an error
/// naming the stage, never a silently black image.
pub fn tensor_values_to_rgba(chw: &[f32], width: usize, height: usize) -> Result<Vec<u8>> {
    let plane = rgba_len(width, height)? / 4;
    if Some(chw.len()) != plane.checked_mul(3) {
        return Err(Error::Shape(format!(
            "the decoded image has {} values; {width}×{height} RGB needs {}",
            chw.len(),
            3 * plane
        )));
    }
    if let Some(bad) = chw.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "the decoded image holds {} at value {bad} of {}: the model's numbers overflowed or \
             its weights are broken, so there is no image to show",
            chw[bad],
            chw.len()
        )));
    }
    let mut out = vec![255u8; plane * 4];
    for c in 0..3 {
        for i in 0..plane {
            let v = (chw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            out[i * 4 + c] = (v * 255.0).round() as u8;
        }
    }
    Ok(out)
}

/// Bytes of `width × height` RGBA, or an error where that overflows (a
/// 65536² claim on wasm32).
pub fn rgba_len(width: usize, height: usize) -> Result<usize> {
    width
        .checked_mul(height)
        .and_then(|p| p.checked_mul(4))
        .ok_or_else(|| Error::arg(format!("a {width}×{height} image is too large to hold")))
}

fn check_len(what: &str, rgba: &[u8], width: usize, height: usize) -> Result<()> {
    let need = rgba_len(width, height)?;
    if rgba.len() != need {
        return Err(Error::Shape(format!(
            "the {what} has {} bytes; {width}×{height} RGBA needs {need}",
            rgba.len(),
        )));
    }
    Ok(())
}

/// Decodes a PNG file's bytes to RGBA, refusing before any pixel buffer is
/// allocated an image wider or taller than `max_side` (a header may claim
/// 100000², a file may be cut off or not a PNG at all).
#[cfg(not(target_family = "wasm"))]
pub fn decode_png(bytes: &[u8], max_side: usize) -> Result<(Vec<u8>, usize, usize)> {
    let bad = |e: png::DecodingError| Error::arg(format!("not a readable PNG image: {e}"));
    let limits = png::Limits {
        bytes: rgba_len(max_side, max_side)?.saturating_mul(2),
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.set_transformations(
        png::Transformations::normalize_to_color8() | png::Transformations::ALPHA,
    );
    let mut reader = decoder.read_info().map_err(bad)?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if w > max_side || h > max_side {
        return Err(Error::arg(format!(
            "the image is {w}×{h}; images up to {max_side}×{max_side} are accepted"
        )));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::arg(format!("a {w}×{h} image is too large to hold")))?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let n = w * h;
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf[..n * 4].to_vec(),
        png::ColorType::GrayscaleAlpha => buf[..n * 2]
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        other => return Err(Error::arg(format!("unsupported PNG color type {other:?}"))),
    };
    Ok((rgba, w, h))
}
