//! What the benchmarks share (each bench uses what it needs of it).
#![allow(dead_code)]

use burn::tensor::{DType, Device, DeviceKind};

/// The backend a bench's argument names: `flex` (the default) or `wgpu`.
pub fn device(arg: Option<&String>) -> Device {
    match arg.map(String::as_str).unwrap_or("flex") {
        "flex" => Device::flex(),
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        other => panic!("unknown backend {other}; use flex or wgpu"),
    }
}

/// The precision a bench's argument names: `f32` (the default) or `f16`.
pub fn precision(arg: Option<&String>) -> DType {
    match arg.map(String::as_str).unwrap_or("f32") {
        "f32" => DType::F32,
        "f16" => DType::F16,
        other => panic!("unknown precision {other}; use f32 or f16"),
    }
}

/// This process's peak resident memory (VmHWM) in MB, NaN where unknown.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
