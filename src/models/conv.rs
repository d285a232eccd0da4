//! `nn.Conv2d`'s forward, with a direct kernel on Burn's CPU backend.
//!
//! Burn's flex computes a convolution as a transposed copy of the weights,
//! the input in NHWC, an im2col matrix per tile of 512 pixels and a gemm per
//! tile (which packs both operands again), then scatters the result back to
//! NCHW. For this project's image sizes those copies cost as much as the
//! products. The kernel below reads the NCHW input in place (one zero-padded
//! copy), keeps blocks of 4 output channels × 2 vectors of one output row in
//! 8 accumulators (larger blocks spill on x86's 16 vector registers and
//! measured slower in wasm; with AVX-512's 32 registers, 8 channels in 16)
//! and loops over input channels and kernel taps, reading the weights as
//! PyTorch stores them or, for large outputs, with each job's filters packed
//! side by side so that a tap's weights for the block are adjacent. Vectors
//! are simd128 in wasm (4 lanes, one thread); natively
//! AVX-512 (16 lanes) or AVX2 with FMA (8 lanes) where the CPU has them,
//! else 4 plain lanes, with blocks of channels spread over rayon's threads.
//! Where output rows are narrower than a block (a UNet's 8×8 and 4×4 levels
//! under AVX-512), blocks run through the padded rows end to end instead of
//! starting at each row, computing the `kw - 1` padding columns between rows
//! rather than idle lanes (`tools/bench.sh`'s UNet: 35–40 → 28–32 ms).
//!
//! Measured (README: Benchmarks): in chromium the shipped model's decoder
//! takes 0.48× and a UNet step 0.8× of their time on flex's path
//! (`tools/bench_ort.mjs --baseline`); natively, with AVX2, `tools/bench.sh`'s
//! decoder 0.66× and its UNet 0.95×, and AVX-512 took the decoder from ~30
//! to ~23 ms. A Winograd F(2×2, 3×3) version (16 products per
//! 2×2 tile instead of 36, with scalar tile transforms) measured slower in
//! wasm: 1.34× this kernel's decode time.
//!
//! It is used for f32 tensors on flex with stride 1, no dilation, one group
//! and kernels larger than 1×1 (flex multiplies 1×1 convolutions without
//! im2col already; as one `flex_host::matmul_add` per batch item they took
//! BK-SDM-Tiny's 512² UNet call from 6.5 to 13.9 s natively, and gained
//! nothing in wasm); every other case (strides, f16, WebGPU) takes Burn's
//! op. The weights are read in place (`flex_host::Values`), not copied per
//! call.

use super::flex_host::{self, Values};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Device, Tensor};
use std::borrow::Cow;

/// Output channels per block where the kernel has 16 vector registers (wasm,
/// AVX2): 8 accumulators (larger blocks spill, and measured slower in wasm).
const CO: usize = 4;
/// Output channels per block with AVX-512's 32 registers: 16 accumulators,
/// 8 weights per pair of input loads (`tools/bench.sh`'s forward bench,
/// four alternations of the builds: decoder 17.8 → 16.0 ms, UNet 13.6 →
/// 12.6 ms against 4).
#[cfg(target_arch = "x86_64")]
const CO_AVX512: usize = 8;

/// `conv(x)`, as `nn.Conv2d` computes it.
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match plan(conv, &x) {
        Some(padding) => direct(conv, x, padding),
        None => conv.forward(x),
    }
}

/// The padding (top, left, bottom, right) when the direct kernel can compute
/// `conv(x)`: f32 on flex, stride 1, no dilation, one group, a kernel larger
/// than 1×1 that fits the padded input.
fn plan(conv: &Conv2d, x: &Tensor<4>) -> Option<[usize; 4]> {
    let PaddingConfig2d::Explicit(top, left, bottom, right) = conv.padding else {
        return None;
    };
    let [_, _, h, w] = x.dims();
    let [kh, kw] = conv.kernel_size;
    let fits = h + top + bottom >= kh && w + left + right >= kw;
    (x.dtype() == DType::F32
        && x.device() == Device::flex()
        && conv.weight.dtype() == DType::F32
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && kh * kw > 1
        && fits)
        .then_some([top, left, bottom, right])
}

/// `conv(x)` by the direct kernel.
fn direct(conv: &Conv2d, x: Tensor<4>, padding: [usize; 4]) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let [c_out, _, kh, kw] = conv.weight.dims();
    on_host(
        conv,
        x,
        |xv, wv, bias| {
            let filters = Filters::new(wv, bias, [c_out, c_in, kh, kw]);
            let (out, [ho, wo]) = filters.conv(xv, [n, h, w], padding);
            (out, [n, c_out, ho, wo])
        },
        |x| conv.forward(x),
    )
}

/// `f(x, weight, bias)` on the values of `x` and of the convolution's
/// parameters in host memory, read in place (a missing bias as zeros), its
/// output `(values, shape)` as a tensor on flex; `burn(x)` if any of them
/// is not an f32 tensor on flex (not reachable for the tensors `plan`
/// admits).
fn on_host(
    conv: &Conv2d,
    x: Tensor<4>,
    f: impl FnOnce(&[f32], &[f32], &[f32]) -> (Vec<f32>, [usize; 4]),
    burn: impl FnOnce(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let (Some(weight), Some(xv)) = (Values::of(&conv.weight.val()), Values::of(&x)) else {
        return burn(x);
    };
    let bias = match &conv.bias {
        Some(b) => match Values::of(&b.val()) {
            Some(b) => Some(b),
            None => return burn(x),
        },
        None => None,
    };
    let zeros;
    let bias = match &bias {
        Some(b) => b.values(),
        None => {
            zeros = vec![0.0; conv.weight.dims()[0]];
            &zeros[..]
        }
    };
    let (out, shape) = f(xv.values(), weight.values(), bias);
    flex_host::tensor(out, shape)
}

/// Nearest-neighbour 2× upsampling, as Burn computes it.
fn upsample_nearest(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let options =
        InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]);
    interpolate(x, options)
}

/// `conv(x upsampled 2× by nearest neighbour)`, as diffusers' `Upsample2D`
/// computes it, for a 3×3 convolution with padding 1.
///
/// With the direct kernel this never builds the upsampled image: each of the
/// four output phases (even/odd row × even/odd column) reads a 2×2
/// neighbourhood of `x`, so it is a 2×2 convolution of `x` whose weights are
/// sums of the 3×3 weights (e.g. even rows see row `i - 1` through the top
/// kernel row and row `i` through the other two). That is 16 products per 2×2
/// output pixels instead of 36, with the same result up to rounding.
pub fn forward_upsampled(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match plan(conv, &x) {
        Some([1, 1, 1, 1]) if conv.kernel_size == [3, 3] => upsampled(conv, x),
        _ => forward(conv, upsample_nearest(x)),
    }
}

/// `forward_upsampled` by four 2×2 convolutions, interleaved.
fn upsampled(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let c_out = conv.weight.dims()[0];
    let phases = |xv: &[f32], wv: &[f32], bias: &[f32]| {
        let phase = |[py, px]: [usize; 2]| {
            let filters = Filters::upsample_phase(wv, bias, [c_out, c_in], [py, px]);
            // Even rows (py = 0) read rows i - 1 and i, odd rows i and i + 1.
            filters.conv(xv, [n, h, w], [1 - py, 1 - px, py, px]).0
        };
        let phases = [[0, 0], [0, 1], [1, 0], [1, 1]].map(phase);
        let mut out = vec![0.0f32; n * c_out * 4 * h * w];
        // One job per output plane.
        crate::cpu_pool::for_each_chunk_mut(&mut out, 4 * h * w, |p, plane| {
            for (k, phase) in phases.iter().enumerate() {
                let (py, px) = (k / 2, k % 2);
                let src = &phase[p * h * w..(p + 1) * h * w];
                for (i, row) in src.chunks_exact(w).enumerate() {
                    let dst = &mut plane[(2 * i + py) * 2 * w..(2 * i + py + 1) * 2 * w];
                    for (j, &v) in row.iter().enumerate() {
                        dst[2 * j + px] = v;
                    }
                }
            }
        });
        (out, [n, c_out, 2 * h, 2 * w])
    };
    on_host(conv, x, phases, |x| conv.forward(upsample_nearest(x)))
}

/// A convolution's weights, `[c_out][c_in][kh][kw]` as PyTorch stores them,
/// and its bias.
struct Filters<'a> {
    c_in: usize,
    kernel: [usize; 2],
    weight: Cow<'a, [f32]>,
    bias: &'a [f32],
}

impl<'a> Filters<'a> {
    fn new(weight: &'a [f32], bias: &'a [f32], [c_out, c_in, kh, kw]: [usize; 4]) -> Self {
        assert_eq!(weight.len(), c_out * c_in * kh * kw, "weight shape");
        assert_eq!(bias.len(), c_out, "bias shape");
        Self {
            c_in,
            kernel: [kh, kw],
            weight: Cow::Borrowed(weight),
            bias,
        }
    }

    /// The 2×2 kernel of output phase (`py`, `px`) of a 3×3 convolution after
    /// a nearest 2× upsampling: along each axis, phase 0 sees the input at
    /// offsets (-1, 0) through kernel taps (0, 1 + 2), phase 1 at (0, +1)
    /// through (0 + 1, 2).
    fn upsample_phase(
        weight: &[f32],
        bias: &'a [f32],
        [c_out, c_in]: [usize; 2],
        [py, px]: [usize; 2],
    ) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "weight shape");
        // Which 3×3 taps fold into each of the two taps, per phase.
        const TAPS: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];
        let mut folded = vec![0.0f32; c_out * c_in * 4];
        // Filters of 8 output channels per job.
        crate::cpu_pool::for_each_chunk_mut(&mut folded, 8 * c_in * 4, |i, part| {
            let src = weight[i * 8 * c_in * 9..].chunks_exact(9);
            for (dst, src) in part.chunks_exact_mut(4).zip(src) {
                for (a, rows) in TAPS[py].iter().enumerate() {
                    for (b, cols) in TAPS[px].iter().enumerate() {
                        dst[2 * a + b] = rows
                            .iter()
                            .flat_map(|&r| cols.iter().map(move |&c| src[3 * r + c]))
                            .sum();
                    }
                }
            }
        });
        Self {
            c_in,
            kernel: [2, 2],
            weight: Cow::Owned(folded),
            bias,
        }
    }

    /// The convolution (stride 1, zero padding top, left, bottom, right) of
    /// `x` `[n][c_in][h][w]`: the output `[n][c_out][ho][wo]` and `[ho, wo]`.
    fn conv(
        &self,
        x: &[f32],
        [n, h, w]: [usize; 3],
        [top, left, bottom, right]: [usize; 4],
    ) -> (Vec<f32>, [usize; 2]) {
        let [kh, kw] = self.kernel;
        assert_eq!(x.len(), n * self.c_in * h * w, "input shape");
        assert!(
            h + top + bottom >= kh && w + left + right >= kw,
            "kernel larger than the input"
        );
        let out = [h + top + bottom + 1 - kh, w + left + right + 1 - kw];
        let layout = Layout::choose(kernel(), self.kernel, out);
        (self.run(x, [n, h, w], [top, left], out, layout), out)
    }

    /// `conv` in `layout`: the padded input, then every block of `CO`
    /// output channels (in parallel natively), batch item by batch item.
    fn run(
        &self,
        x: &[f32],
        [n, h, w]: [usize; 3],
        [top, left]: [usize; 2],
        [ho, wo]: [usize; 2],
        layout: Layout,
    ) -> Vec<f32> {
        let [kh, kw] = self.kernel;
        let g = layout.geometry(self.c_in, self.kernel, [ho, wo]);
        let kernel = layout.block;
        let [hp, wp] = g.padded;
        let mut padded = vec![0.0f32; self.c_in * hp * wp + g.slack()];
        let c_out = self.bias.len();
        let mut y = vec![0.0f32; n * c_out * ho * wo];
        let filter = self.c_in * kh * kw;
        let co = g.channels;
        let block_weights = filter * co;
        for (xb, yb) in x
            .chunks_exact(self.c_in * h * w)
            .zip(y.chunks_exact_mut(c_out * ho * wo))
        {
            for (plane, src) in padded.chunks_mut(hp * wp).zip(xb.chunks_exact(h * w)) {
                for (r, row) in src.chunks_exact(w).enumerate() {
                    let at = (r + top) * wp + left;
                    plane[at..at + w].copy_from_slice(row);
                }
            }
            crate::cpu_pool::for_each_chunk_mut(yb, co * ho * wo, |i, out| {
                let filters = &self.weight[i * block_weights..];
                let filters = &filters[..block_weights.min(filters.len())];
                let bias = &self.bias[i * co..(i * co + co).min(c_out)];
                if g.packed {
                    kernel(&g, &padded, &side_by_side(filters, filter, co), bias, out)
                } else {
                    kernel(&g, &padded, filters, bias, out)
                }
            });
        }
        y
    }
}

/// A block's filters, `[channels][filter]` (up to `co` channels), side by
/// side: `[filter][co]`, zeros past the last channel, so that the kernel
/// reads each tap's `co` weights together. Each job packs its own, where
/// outputs are large ([`PACK_FROM`] blocks).
fn side_by_side(filters: &[f32], filter: usize, co: usize) -> Vec<f32> {
    let mut packed = vec![0.0f32; filter * co];
    for (j, src) in filters.chunks_exact(filter).take(co).enumerate() {
        for (d, &v) in packed[j..].iter_mut().step_by(co).zip(src) {
            *d = v;
        }
    }
    packed
}

/// Pixel blocks per output plane from which each job packs its filters
/// side by side: every weight is then read for that many blocks. Natively
/// (AVX-512, 32-pixel blocks) that is the decoder's 32×32 and 64×64 levels;
/// in wasm (8-pixel blocks) from 16×16 on. Measured, alternating builds:
/// natively (`tools/bench.sh`) reading the filters in place everywhere gave
/// the same UNet time and a 1.02× decoder, packing at every size (as all
/// convolutions once did, ahead of the jobs) a 1.08× UNet; in wasm
/// (`tools/bench_ort.mjs`, with the attention and linear changes of the
/// same day) a UNet step took 0.94× and the decoder 0.99× the time of
/// packing at every size, where reading in place everywhere took the
/// decoder 1.08×.
const PACK_FROM: usize = 32;

/// The sizes every block of one convolution shares, and where its blocks lie.
struct Geometry {
    c_in: usize,
    kernel: [usize; 2],
    /// `[hp, wp]` of the zero-padded input's planes.
    padded: [usize; 2],
    /// `[ho, wo]`.
    out: [usize; 2],
    /// Pixels per block.
    px: usize,
    /// Blocks run through each plane's rows end to end (`wp = wo + kw - 1`),
    /// a block crossing from one row into the next; else each row starts a
    /// block (`wp` whole blocks plus `kw - 1`).
    flat: bool,
    /// A block's filters come side by side ([`side_by_side`]), else as
    /// PyTorch stores them, one after another.
    packed: bool,
    /// Output channels per block.
    channels: usize,
}

impl Geometry {
    /// Zeros after the last plane, for the loads of a flat layout's last
    /// block (which may read up to `px + kw - 2` values past it).
    fn slack(&self) -> usize {
        if self.flat {
            self.px + self.kernel[1]
        } else {
            0
        }
    }
}

/// One block of `CO` output channels over the whole output: its filters
/// and biases, and `out`, the planes of its (up to `CO`) channels.
type ChannelBlock = fn(&Geometry, &[f32], &[f32], &[f32], &mut [f32]);

/// A kernel on one instruction set: its block forms of one and two vectors
/// per block, the lanes of a vector and the output channels of a block.
#[derive(Clone, Copy)]
struct Kernel {
    one: ChannelBlock,
    two: ChannelBlock,
    lanes: usize,
    channels: usize,
}

/// The widest kernel this machine runs.
fn kernel() -> Kernel {
    kernels().next().expect("every target has a kernel")
}

/// Every kernel this machine runs, widest first: simd128 in wasm; natively
/// AVX-512, AVX2 with FMA where the CPU has them (checked at run time), and
/// 4 plain lanes.
fn kernels() -> impl Iterator<Item = Kernel> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let wide = [Some(Kernel::on::<Wasm128, CO>(
        channel_block::<Wasm128, 1, CO>,
        channel_block::<Wasm128, 2, CO>,
    ))];
    #[cfg(target_arch = "x86_64")]
    let wide = [
        std::is_x86_feature_detected!("avx512f").then(|| {
            Kernel::on::<Avx512, CO_AVX512>(avx512::<1, CO_AVX512>, avx512::<2, CO_AVX512>)
        }),
        (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
            .then(|| Kernel::on::<Avx2, CO>(avx2::<1, CO>, avx2::<2, CO>)),
    ];
    #[cfg(not(any(
        all(target_arch = "wasm32", target_feature = "simd128"),
        target_arch = "x86_64"
    )))]
    let wide: [Option<Kernel>; 0] = [];
    #[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
    let plain = Some(Kernel::on::<Portable, CO>(
        channel_block::<Portable, 1, CO>,
        channel_block::<Portable, 2, CO>,
    ));
    #[cfg(not(any(test, not(all(target_arch = "wasm32", target_feature = "simd128")))))]
    let plain = None;
    wide.into_iter().flatten().chain(plain)
}

impl Kernel {
    fn on<S: Simd, const CO: usize>(one: ChannelBlock, two: ChannelBlock) -> Self {
        Self {
            one,
            two,
            lanes: S::W,
            channels: CO,
        }
    }
}

/// How a kernel covers one convolution's output: its block form, pixels per
/// block and whether blocks run through rows end to end.
#[derive(Clone, Copy)]
struct Layout {
    block: ChannelBlock,
    px: usize,
    flat: bool,
    channels: usize,
}

impl Layout {
    /// Every layout of `kernel`, the preferred first among equally costly
    /// ones: blocks per row (one vector where a row fits in one, else two),
    /// then flat with two vectors and with one.
    fn all(kernel: Kernel, wo: usize) -> [Self; 3] {
        let (w, channels) = (kernel.lanes, kernel.channels);
        let (block, px) = if wo <= w {
            (kernel.one, w)
        } else {
            (kernel.two, 2 * w)
        };
        [
            Self {
                block,
                px,
                flat: false,
                channels,
            },
            Self {
                block: kernel.two,
                px: 2 * w,
                flat: true,
                channels,
            },
            Self {
                block: kernel.one,
                px: w,
                flat: true,
                channels,
            },
        ]
    }

    /// The layout of `kernel` that computes the fewest pixels for an output
    /// `[ho, wo]`. Rows narrower than a block waste lanes when each starts a
    /// block (AVX-512 on a UNet's 8×8 level: half of them, at 4×4 three
    /// quarters); a flat layout wastes only the `kw - 1` padding columns
    /// between rows, which wide rows do not need to.
    fn choose(kernel: Kernel, [_, kw]: [usize; 2], [ho, wo]: [usize; 2]) -> Self {
        let cost = |l: &Self| {
            if l.flat {
                (ho * (wo + kw - 1)).div_ceil(l.px) * l.px
            } else {
                ho * wo.div_ceil(l.px) * l.px
            }
        };
        Self::all(kernel, wo)
            .into_iter()
            .reduce(|best, l| if cost(&l) < cost(&best) { l } else { best })
            .expect("three layouts")
    }

    fn geometry(&self, c_in: usize, [kh, kw]: [usize; 2], [ho, wo]: [usize; 2]) -> Geometry {
        let wp = if self.flat {
            wo + kw - 1
        } else {
            wo.div_ceil(self.px) * self.px + kw - 1
        };
        let blocks = if self.flat {
            (ho * wp).div_ceil(self.px)
        } else {
            ho * wo.div_ceil(self.px)
        };
        Geometry {
            c_in,
            kernel: [kh, kw],
            padded: [ho + kh - 1, wp],
            out: [ho, wo],
            px: self.px,
            flat: self.flat,
            packed: blocks >= PACK_FROM,
            channels: self.channels,
        }
    }
}

/// `$name::<NV, CO>`: `channel_block` on `$simd` compiled with the CPU
/// features `$features`; `kernels` offers it only on a CPU that has them.
macro_rules! feature_kernel {
    ($name:ident, $simd:ty, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        fn $name<const NV: usize, const CO: usize>(
            g: &Geometry,
            padded: &[f32],
            weights: &[f32],
            bias: &[f32],
            out: &mut [f32],
        ) {
            #[target_feature(enable = $features)]
            fn inner<const NV: usize, const CO: usize>(
                g: &Geometry,
                padded: &[f32],
                weights: &[f32],
                bias: &[f32],
                out: &mut [f32],
            ) {
                channel_block::<$simd, NV, CO>(g, padded, weights, bias, out)
            }
            // SAFETY: `kernels` checked that the CPU has `$features`.
            unsafe { inner::<NV, CO>(g, padded, weights, bias, out) }
        }
    };
}
feature_kernel!(avx2, Avx2, "avx2,fma");
feature_kernel!(avx512, Avx512, "avx512f");

/// Every block of `CO` channels × `NV` vectors, stored in `out`'s planes.
#[inline(always)]
fn channel_block<S: Simd, const NV: usize, const CO: usize>(
    g: &Geometry,
    padded: &[f32],
    weights: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    let ([ho, wo], [_, wp]) = (g.out, g.padded);
    debug_assert_eq!((g.px, g.channels), (S::W * NV, CO));
    let channels = out.len() / (ho * wo);
    // Blocks start at every row (or only at the first, running through all
    // of them), then every `px` pixels. (A loop, not a closure: a closure
    // would not inherit the caller's target features, and the vector
    // intrinsics inlined into it would become calls.)
    let (rows, per_row) = if g.flat {
        (1, (ho * wp).div_ceil(g.px))
    } else {
        (ho, wo.div_ceil(g.px))
    };
    for row in 0..rows {
        for b in 0..per_row {
            let start = row * wp + b * g.px;
            // Two forms, so that a packed block's weight offsets are constants.
            let acc = if g.packed {
                block::<S, NV, CO, true>(g, padded, weights, bias, start)
            } else {
                block::<S, NV, CO, false>(g, padded, weights, bias, start)
            };
            for (j, lanes) in acc.iter().take(channels).enumerate() {
                let mut vals = [0.0f32; 32];
                for (i, &v) in lanes.iter().enumerate() {
                    S::store(v, &mut vals[S::W * i..S::W * (i + 1)]);
                }
                // The block's pixels, row piece by row piece, less the
                // padding columns (and rows) a flat block also computes.
                let mut p = start;
                while p < start + g.px {
                    let (r, c) = (p / wp, p % wp);
                    let end = (p - c + wp).min(start + g.px);
                    if r < ho && c < wo {
                        let len = (end - p).min(wo - c);
                        let at = (j * ho + r) * wo + c;
                        out[at..at + len].copy_from_slice(&vals[p - start..p - start + len]);
                    }
                    p = end;
                }
            }
        }
    }
}

/// One block: `CO` output channels × `NV` vectors of pixels from `start`
/// (an offset into a padded plane) on, summed over input channels and taps,
/// starting from the bias. `weights` holds the block's filters, side by side
/// or one after another (`PACKED`, as `g.packed`), and `bias` their biases; a block of
/// fewer than `CO` channels (the last) computes something in the others,
/// which is not stored.
#[inline(always)]
fn block<S: Simd, const NV: usize, const CO: usize, const PACKED: bool>(
    g: &Geometry,
    padded: &[f32],
    weights: &[f32],
    bias: &[f32],
    start: usize,
) -> [[S::V; NV]; CO] {
    let (c_in, [kh, kw], [hp, wp]) = (g.c_in, g.kernel, g.padded);
    let (filter, last) = (c_in * kh * kw, bias.len().clamp(1, CO) - 1);
    // Where channel j's weight of the first tap is, and the step to the next.
    debug_assert_eq!(PACKED, g.packed);
    let (first, step): ([usize; CO], usize) = if PACKED {
        (std::array::from_fn(|j| j), CO)
    } else {
        (std::array::from_fn(|j| j.min(last) * filter), 1)
    };
    // Every load below stays in bounds: the furthest reads the last input
    // channel's plane at start + (kh - 1)·wp + kw - 1 + W·NV - 1, and the
    // weights at first[j] + (filter - 1)·step.
    assert!(
        c_in.saturating_sub(1) * hp * wp + start + (kh - 1) * wp + kw - 1 + S::W * NV
            <= padded.len()
    );
    assert!(
        first
            .iter()
            .all(|&f| f + filter.saturating_sub(1) * step < weights.len())
    );
    let mut acc: [[S::V; NV]; CO] =
        std::array::from_fn(|j| [S::splat(bias.get(j).copied().unwrap_or(0.0)); NV]);
    let mut wi = 0;
    for ci in 0..c_in {
        for ky in 0..kh {
            let row = (ci * hp + ky) * wp + start;
            for kx in 0..kw {
                // SAFETY: in bounds by the asserts above.
                let inp: [S::V; NV] =
                    std::array::from_fn(|i| unsafe { S::load(padded, row + kx + S::W * i) });
                for (a, &at) in acc.iter_mut().zip(&first) {
                    let wv = unsafe { S::splat_at(weights, at + wi) };
                    for (a, &x) in a.iter_mut().zip(&inp) {
                        *a = S::mul_add(*a, wv, x);
                    }
                }
                wi += step;
            }
        }
    }
    acc
}

/// A SIMD instruction set for the kernel: vectors of `W` f32 lanes.
trait Simd {
    type V: Copy;
    const W: usize;
    /// `v[at..at + W]`. Safety: `at + W <= v.len()`.
    unsafe fn load(v: &[f32], at: usize) -> Self::V;
    /// `v[at]` in every lane. Safety: `at < v.len()`.
    unsafe fn splat_at(v: &[f32], at: usize) -> Self::V;
    fn splat(x: f32) -> Self::V;
    /// `acc + a · b`.
    fn mul_add(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// The lanes into `out` (`W` long).
    fn store(v: Self::V, out: &mut [f32]);
}

/// Four plain lanes, wherever nothing wider is known to run.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
struct Portable;

#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
impl Simd for Portable {
    type V = [f32; 4];
    const W: usize = 4;
    #[inline(always)]
    unsafe fn load(v: &[f32], at: usize) -> Self::V {
        [v[at], v[at + 1], v[at + 2], v[at + 3]]
    }
    #[inline(always)]
    unsafe fn splat_at(v: &[f32], at: usize) -> Self::V {
        [v[at]; 4]
    }
    #[inline(always)]
    fn splat(x: f32) -> Self::V {
        [x; 4]
    }
    #[inline(always)]
    fn mul_add(acc: Self::V, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| acc[i] + a[i] * b[i])
    }
    #[inline(always)]
    fn store(v: Self::V, out: &mut [f32]) {
        out.copy_from_slice(&v);
    }
}

/// wasm's simd128: 4 lanes, a multiply and an add (no fused form).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
struct Wasm128;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Simd for Wasm128 {
    type V = core::arch::wasm32::v128;
    const W: usize = 4;
    #[inline(always)]
    unsafe fn load(v: &[f32], at: usize) -> Self::V {
        debug_assert!(at + 4 <= v.len());
        unsafe { core::arch::wasm32::v128_load(v.as_ptr().add(at).cast()) }
    }
    #[inline(always)]
    unsafe fn splat_at(v: &[f32], at: usize) -> Self::V {
        debug_assert!(at < v.len());
        unsafe { core::arch::wasm32::v128_load32_splat(v.as_ptr().add(at).cast()) }
    }
    #[inline(always)]
    fn splat(x: f32) -> Self::V {
        core::arch::wasm32::f32x4_splat(x)
    }
    #[inline(always)]
    fn mul_add(acc: Self::V, a: Self::V, b: Self::V) -> Self::V {
        use core::arch::wasm32::{f32x4_add, f32x4_mul};
        f32x4_add(acc, f32x4_mul(a, b))
    }
    #[inline(always)]
    fn store(v: Self::V, out: &mut [f32]) {
        let v: [f32; 4] = unsafe { core::mem::transmute(v) };
        out.copy_from_slice(&v);
    }
}

/// An x86-64 vector set with fused multiply-add: `$name` with `$w` lanes of
/// `$v`, through its `loadu` / `set1` / `fmadd` / `storeu` intrinsics. Only
/// reached through the `feature_kernel!` of the same features, which runs on
/// CPUs that have them.
macro_rules! x86_simd {
    ($(#[$doc:meta])* $name:ident, $v:ident, $w:literal, $load:ident, $set1:ident, $fmadd:ident, $store:ident) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        struct $name;

        #[cfg(target_arch = "x86_64")]
        impl Simd for $name {
            type V = core::arch::x86_64::$v;
            const W: usize = $w;
            #[inline(always)]
            unsafe fn load(v: &[f32], at: usize) -> Self::V {
                debug_assert!(at + $w <= v.len());
                unsafe { core::arch::x86_64::$load(v.as_ptr().add(at)) }
            }
            #[inline(always)]
            unsafe fn splat_at(v: &[f32], at: usize) -> Self::V {
                debug_assert!(at < v.len());
                Self::splat(unsafe { *v.as_ptr().add(at) })
            }
            // SAFETY (the three below): only compiled into the kernel for
            // these features, on CPUs that have them.
            #[inline(always)]
            fn splat(x: f32) -> Self::V {
                unsafe { core::arch::x86_64::$set1(x) }
            }
            #[inline(always)]
            fn mul_add(acc: Self::V, a: Self::V, b: Self::V) -> Self::V {
                unsafe { core::arch::x86_64::$fmadd(a, b, acc) }
            }
            #[inline(always)]
            fn store(v: Self::V, out: &mut [f32]) {
                assert!(out.len() >= $w);
                unsafe { core::arch::x86_64::$store(out.as_mut_ptr(), v) }
            }
        }
    };
}
x86_simd!(
    /// AVX2 with FMA: 8 lanes.
    Avx2, __m256, 8, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps
);
x86_simd!(
    /// AVX-512: 16 lanes.
    Avx512, __m512, 16, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps
);

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::TensorData;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as f32 / u32::MAX as f32 - 0.5
            })
            .collect()
    }

    /// A convolution with seeded weights and bias.
    fn random_conv(
        c_in: usize,
        c_out: usize,
        kernel: [usize; 2],
        padding: [usize; 4],
        seed: u32,
    ) -> Conv2d {
        let device = Device::flex();
        let [t, l, b, r] = padding;
        let mut conv = Conv2dConfig::new([c_in, c_out], kernel)
            .with_padding(PaddingConfig2d::Explicit(t, l, b, r))
            .init(&device);
        let [kh, kw] = kernel;
        conv.weight = burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(values(c_out * c_in * kh * kw, seed), [c_out, c_in, kh, kw]),
            &device,
        ));
        conv.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(values(c_out, seed + 1000), [c_out]),
            &device,
        )));
        conv
    }

    /// The kernel against Burn's convolution on flex, for shapes that cover
    /// both block widths, row tails, output channels that are not a multiple
    /// of 4, batches, rectangular kernels, asymmetric padding, and filters
    /// read in place and packed.
    #[test]
    fn matches_burn_convolution() {
        let device = Device::flex();
        let cases: [([usize; 4], [usize; 2], [usize; 4]); 11] = [
            // [n, c_in, h, w], [kh, kw], [top, left, bottom, right]
            ([1, 4, 16, 16], [3, 3], [1, 1, 1, 1]),
            ([2, 8, 9, 13], [3, 3], [1, 1, 1, 1]),
            ([1, 5, 4, 4], [3, 3], [1, 1, 1, 1]),
            ([1, 3, 7, 3], [3, 3], [1, 1, 1, 1]),
            ([1, 6, 10, 11], [3, 3], [0, 0, 1, 1]),
            ([2, 3, 6, 20], [2, 5], [1, 2, 0, 2]),
            ([1, 2, 5, 6], [3, 3], [0, 0, 0, 0]),
            ([1, 16, 12, 12], [3, 3], [2, 2, 2, 2]),
            ([1, 3, 1, 1], [3, 3], [1, 1, 1, 1]),
            // Outputs of PACK_FROM blocks and more: filters packed per job
            // (also the 16×16 case above with fewer than 32 lanes).
            ([2, 5, 32, 33], [3, 3], [1, 1, 1, 1]),
            ([1, 3, 40, 30], [2, 5], [0, 2, 1, 2]),
        ];
        for (i, ([n, c_in, h, w], [kh, kw], [t, l, b, r])) in cases.into_iter().enumerate() {
            for c_out in [1, 3, 4, 7, 12] {
                let seed = (i * 16 + c_out) as u32;
                let conv = random_conv(c_in, c_out, [kh, kw], [t, l, b, r], seed);
                let x = Tensor::<4>::from_data(
                    TensorData::new(values(n * c_in * h * w, seed + 2000), [n, c_in, h, w]),
                    &device,
                );
                assert_eq!(plan(&conv, &x), Some([t, l, b, r]));
                let want = conv.forward(x.clone());
                let got = direct(&conv, x, [t, l, b, r]);
                assert_eq!(got.dims(), want.dims(), "case {i}, c_out {c_out}");
                let diff = (got - want.clone()).abs().max().into_scalar::<f32>();
                assert!(diff < 1e-5, "case {i}, c_out {c_out}: max diff {diff}");
                // Every kernel this machine runs (`direct` takes the widest:
                // AVX-512, AVX2 and the plain 4 lanes on x86-64) in every
                // layout (`direct` takes the cheapest).
                let [_, _, ho, wo] = want.dims();
                let (wv, bv) = (
                    values(c_out * c_in * kh * kw, seed),
                    values(c_out, seed + 1000),
                );
                let filters = Filters::new(&wv, &bv, [c_out, c_in, kh, kw]);
                let xv = values(n * c_in * h * w, seed + 2000);
                let want = want.into_data().try_to_vec::<f32>().unwrap();
                for (k, kernel) in kernels().enumerate() {
                    for layout in Layout::all(kernel, wo) {
                        let got = filters.run(&xv, [n, h, w], [t, l], [ho, wo], layout);
                        let diff = got
                            .iter()
                            .zip(&want)
                            .map(|(p, q)| (p - q).abs())
                            .fold(0.0, f32::max);
                        let (px, flat) = (layout.px, layout.flat);
                        assert!(
                            diff < 1e-5,
                            "kernel {k} ({px} px, flat {flat}), case {i}, c_out {c_out}: max diff {diff}"
                        );
                    }
                }
            }
        }
    }

    /// With 16 lanes, narrow rows take a flat layout (8×8: 80 pixels computed
    /// for 64 instead of 128) and wide rows keep a block per row.
    #[test]
    fn layout_computes_the_fewest_pixels() {
        let plain = |g: &Geometry, p: &[f32], w: &[f32], b: &[f32], o: &mut [f32]| {
            channel_block::<Portable, 1, CO>(g, p, w, b, o)
        };
        let sixteen = Kernel {
            one: plain,
            two: plain,
            lanes: 16,
            channels: CO,
        };
        let pick = |out| {
            let l = Layout::choose(sixteen, [3, 3], out);
            (l.flat, l.px)
        };
        assert_eq!(pick([8, 8]), (true, 16));
        // 24 padded pixels: one block of 32 or two of 16; the wider is preferred.
        assert_eq!(pick([4, 4]), (true, 32));
        assert_eq!(pick([16, 16]), (false, 16));
        assert_eq!(pick([64, 64]), (false, 32));
    }

    /// The four-phase 2×2 form of upsample + 3×3 convolution against Burn's
    /// nearest upsampling and convolution, including a batch, 1-pixel and
    /// odd sizes and output channels that are not a multiple of 4.
    #[test]
    fn upsampled_matches_burn() {
        let device = Device::flex();
        for (i, [n, c_in, c_out, h, w]) in [
            [1, 4, 4, 4, 4],
            [2, 3, 5, 5, 7],
            [1, 8, 3, 1, 1],
            [1, 6, 9, 16, 9],
            [2, 5, 19, 3, 4],
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 500 + i as u32;
            let conv = random_conv(c_in, c_out, [3, 3], [1, 1, 1, 1], seed);
            let x = Tensor::<4>::from_data(
                TensorData::new(values(n * c_in * h * w, seed + 2), [n, c_in, h, w]),
                &device,
            );
            let options =
                InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]);
            let want = conv.forward(interpolate(x.clone(), options));
            // On rayon's pool and on the team of `run_on_cpu_pool`.
            let team = crate::run_on_cpu_pool(|| upsampled(&conv, x.clone()));
            for got in [upsampled(&conv, x.clone()), team] {
                assert_eq!(got.dims(), want.dims(), "case {i}");
                let diff = (got - want.clone()).abs().max().into_scalar::<f32>();
                assert!(diff < 1e-5, "case {i}: max diff {diff}");
            }
        }
    }

    /// Stride, dilation, groups, 1×1 kernels and non-f32 tensors stay with Burn.
    #[test]
    fn other_convolutions_take_burns_op() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 4, 8, 8], &device);
        let base =
            Conv2dConfig::new([4, 4], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
        assert!(plan(&base.init(&device), &x).is_some());
        assert!(plan(&base.clone().with_stride([2, 2]).init(&device), &x).is_none());
        assert!(plan(&base.clone().with_dilation([2, 2]).init(&device), &x).is_none());
        assert!(plan(&base.clone().with_groups(2).init(&device), &x).is_none());
        assert!(
            plan(
                &Conv2dConfig::new([4, 4], [1, 1])
                    .with_padding(PaddingConfig2d::Explicit(0, 0, 0, 0))
                    .init(&device),
                &x
            )
            .is_none()
        );
        assert!(plan(&base.init(&device), &x.clone().cast(DType::F16)).is_none());
        // A 3×3 kernel without padding does not fit a 2×2 input.
        let unpadded =
            Conv2dConfig::new([4, 4], [3, 3]).with_padding(PaddingConfig2d::Explicit(0, 0, 0, 0));
        let tiny = Tensor::<4>::zeros([1, 4, 2, 2], &device);
        assert!(plan(&unpadded.init(&device), &tiny).is_none());
    }
}
