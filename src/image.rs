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
    check_len(rgba, width, height)?;
    let plane = width * height;
    let mut v = vec![0f32; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            v[c * plane + i] = rgba[i * 4 + c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(v, [1, 3, height, width]),
        device,
    ))
}

/// RGBA bytes of a mask → `[1, 1, H, W]` in [0, 1]: 1 where the red channel is
/// white (repaint), 0 where black (keep).
pub fn mask_to_tensor(
    rgba: &[u8],
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    check_len(rgba, width, height)?;
    let v: Vec<f32> = rgba.chunks_exact(4).map(|p| p[0] as f32 / 255.0).collect();
    Ok(Tensor::from_data(
        TensorData::new(v, [1, 1, height, width]),
        device,
    ))
}

/// `[1, 3, H, W]` values in about [-1, 1] (CHW, as read back) → RGBA bytes,
/// with diffusers' rounding: `round(clamp(x / 2 + 0.5, 0, 1) · 255)`.
///
/// Non-finite values (an f16 overflow, a broken checkpoint) are an error
/// naming the stage, never a silently black image.
pub fn tensor_values_to_rgba(chw: &[f32], width: usize, height: usize) -> Result<Vec<u8>> {
    let plane = width * height;
    if chw.len() != 3 * plane {
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

fn check_len(rgba: &[u8], width: usize, height: usize) -> Result<()> {
    if rgba.len() != width * height * 4 {
        return Err(Error::Shape(format!(
            "image data has {} bytes; {width}×{height} RGBA needs {}",
            rgba.len(),
            width * height * 4
        )));
    }
    Ok(())
}
