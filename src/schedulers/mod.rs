//! Noise schedules and samplers, named and behaving like diffusers'
//! `schedulers/` (v0.42): the same config keys, defaults and timestep rules.
//!
//! Schedules are computed once, in f64, when a scheduler is built. A sampler
//! step turns them into a handful of scalar coefficients and applies those to
//! the latents on their device: no readback, so it runs unchanged on WebGPU.

mod ddim;
mod ddpm;
mod lcm;

pub use ddim::{DDIMScheduler, DDIMSchedulerConfig, DdimCoefficients};
pub use ddpm::{DDPMScheduler, DDPMSchedulerConfig, VarianceType};
pub use lcm::{LCMScheduler, LCMSchedulerConfig};

use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;

use crate::error::{Error, Result};

/// How betas are laid out over the training timesteps (`beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BetaSchedule {
    /// Evenly spaced betas from `beta_start` to `beta_end` (DDPM paper).
    #[serde(rename = "linear")]
    Linear,
    /// Evenly spaced square roots, squared: the Stable Diffusion schedule.
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal 2021 (eq. 17), betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
    /// A sigmoid over [-6, 6] rescaled to `[beta_start, beta_end]` (GeoDiff).
    #[serde(rename = "sigmoid")]
    Sigmoid,
    /// diffusers' Laplace-SNR schedule (DDPM only in diffusers).
    #[serde(rename = "laplace")]
    Laplace,
}

/// How `set_timesteps(n)` picks `n` of the training timesteps
/// (Lin et al. 2023, "Common Diffusion Noise Schedules...", table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum TimestepSpacing {
    /// `0, r, 2r, ...` with `r = T / n` (integer division), plus `steps_offset`.
    #[default]
    #[serde(rename = "leading")]
    Leading,
    /// Counting down from `T - 1` in steps of `T / n` (real division).
    #[serde(rename = "trailing")]
    Trailing,
    /// `n` points evenly spaced over `[0, T - 1]`, rounded.
    #[serde(rename = "linspace")]
    Linspace,
}

/// What the denoising model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum PredictionType {
    /// The noise ε that was added.
    #[default]
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The velocity v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022, sec. 4).
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The clean sample x₀ itself.
    #[serde(rename = "sample")]
    Sample,
}

/// The fields shared by every scheduler config that define ᾱ_t.
#[derive(Debug, Clone, PartialEq)]
pub struct BetaConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub rescale_betas_zero_snr: bool,
}

/// The most training timesteps a schedule may have (models use about 1000):
/// a config's number is bounded before anything is allocated from it.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// β_t and ᾱ_t = ∏(1 − β_s) for the training timesteps, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// Builds the schedule, checking every value a config can get wrong.
    pub fn new(c: &BetaConfig) -> Result<Self> {
        let t = c.num_train_timesteps;
        if t == 0 {
            return Err(Error::config("num_train_timesteps must be at least 1"));
        }
        if t > MAX_TRAIN_TIMESTEPS {
            return Err(Error::config(format!(
                "num_train_timesteps = {t} is more than {MAX_TRAIN_TIMESTEPS}; diffusion models are \
                 trained with about 1000"
            )));
        }
        let mut betas = match &c.trained_betas {
            Some(b) => {
                if b.len() != t {
                    return Err(Error::config(format!(
                        "trained_betas has {} values but num_train_timesteps is {t}",
                        b.len()
                    )));
                }
                b.clone()
            }
            None => {
                check_beta_range(c)?;
                match c.beta_schedule {
                    BetaSchedule::Linear => linspace(c.beta_start, c.beta_end, t),
                    BetaSchedule::ScaledLinear => {
                        linspace(c.beta_start.sqrt(), c.beta_end.sqrt(), t)
                            .into_iter()
                            .map(|b| b * b)
                            .collect()
                    }
                    BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(t, |s| {
                        let x = (s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2;
                        x.cos().powi(2)
                    }),
                    BetaSchedule::Laplace => betas_for_alpha_bar(t, |s| {
                        let d = 0.5 - s;
                        let lmb = -0.5 * (1.0f64).copysign(d) * (1.0 - 2.0 * d.abs() + 1e-6).ln();
                        let snr = lmb.exp();
                        (snr / (1.0 + snr)).sqrt()
                    }),
                    BetaSchedule::Sigmoid => linspace(-6.0, 6.0, t)
                        .into_iter()
                        .map(|x| sigmoid(x) * (c.beta_end - c.beta_start) + c.beta_start)
                        .collect(),
                }
            }
        };
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(b.is_finite() && **b > 0.0 && **b <= 1.0))
        {
            return Err(Error::config(format!(
                "beta[{i}] = {b} is outside (0, 1]; check beta_start, beta_end and trained_betas"
            )));
        }
        if c.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas_cumprod = betas
            .iter()
            .scan(1.0f64, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    /// Number of training timesteps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false: a schedule has at least one timestep.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// ᾱ_t, or an error naming the valid range.
    pub fn alpha_cumprod(&self, t: usize) -> Result<f64> {
        self.alphas_cumprod.get(t).copied().ok_or_else(|| {
            Error::arg(format!(
                "timestep {t} is outside the schedule's 0..={}",
                self.len() - 1
            ))
        })
    }

    /// The forward process q(x_t | x_0): `√ᾱ_t x₀ + √(1−ᾱ_t) ε` (DDPM eq. 4),
    /// with one timestep for the whole batch or one per batch element.
    pub fn add_noise<const D: usize>(
        &self,
        original_samples: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[usize],
    ) -> Result<Tensor<D>> {
        check_same_shape("noise", &noise, "original_samples", &original_samples)?;
        let a = self.per_batch(timesteps, &original_samples, |a| a.sqrt())?;
        let s = self.per_batch(timesteps, &original_samples, |a| (1.0 - a).sqrt())?;
        Ok(original_samples * a + noise * s)
    }

    /// [`Self::add_noise`] on plain values (any shape, flattened) with ε
    /// from the seeded stream (see [`crate::NoiseGenerator`]), on the CPU:
    /// the forward process a teaching view shows for any t.
    pub fn add_noise_seeded(&self, x0: &[f32], timestep: usize, seed: u64) -> Result<Vec<f32>> {
        let device = burn::tensor::Device::flex();
        let n = x0.len();
        let tensor = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, n]), &device);
        let noise = crate::NoiseGenerator::new(seed).sample(n);
        let x_t = self.add_noise(tensor(x0.to_vec()), tensor(noise), &[timestep])?;
        x_t.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Shape(format!("{e:?}")))
    }

    /// The v-prediction target `√ᾱ_t ε − √(1−ᾱ_t) x₀` (Salimans & Ho 2022).
    pub fn get_velocity<const D: usize>(
        &self,
        sample: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[usize],
    ) -> Result<Tensor<D>> {
        check_same_shape("noise", &noise, "sample", &sample)?;
        let a = self.per_batch(timesteps, &sample, |a| a.sqrt())?;
        let s = self.per_batch(timesteps, &sample, |a| (1.0 - a).sqrt())?;
        Ok(noise * a - sample * s)
    }

    /// A `[B, 1, ...]` tensor of `f(ᾱ_t)` that broadcasts over `like`.
    fn per_batch<const D: usize>(
        &self,
        timesteps: &[usize],
        like: &Tensor<D>,
        f: impl Fn(f64) -> f64,
    ) -> Result<Tensor<D>> {
        let batch = like.dims()[0];
        let values = match timesteps.len() {
            1 => vec![f(self.alpha_cumprod(timesteps[0])?) as f32; batch],
            n if n == batch => timesteps
                .iter()
                .map(|&t| Ok(f(self.alpha_cumprod(t)?) as f32))
                .collect::<Result<Vec<_>>>()?,
            n => {
                return Err(Error::Shape(format!(
                    "{n} timesteps given for a batch of {batch}; give 1 or {batch}"
                )));
            }
        };
        let mut shape = [1usize; D];
        shape[0] = batch;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &like.device(),
        ))
    }
}

/// A pipeline's `scheduler/scheduler_config.json`, read by its `_class_name`.
/// DDIM and LCM run as written. The other samplers of Stable Diffusion
/// folders (PNDM in SD 1.x, Euler in SD-Turbo, DPM-Solver, ...) run as DDIM on
/// the same noise schedule and timestep spacing, as
/// `DDIMScheduler.from_config` would read their config; [`Self::note`] says so.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerConfig {
    Ddim {
        config: DDIMSchedulerConfig,
        /// The class the config names, when it is not DDIMScheduler.
        mapped_from: Option<String>,
    },
    Lcm(LCMSchedulerConfig),
}

/// Samplers whose last step lands on the clean sample (σ = 0): run as DDIM,
/// they end at ᾱ = 1 too (`set_alpha_to_one`). For ε-prediction, DDIM with
/// η = 0 is the Euler method on the same ODE (Karras et al. 2022, sec. 3),
/// so Euler's timesteps give Euler's images.
const ENDS_AT_CLEAN: &[&str] = &[
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "DDPMScheduler",
    "TCDScheduler",
];

impl SchedulerConfig {
    /// Parses `scheduler_config.json`, choosing the sampler by `_class_name`.
    pub fn from_json(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Class {
            #[serde(rename = "_class_name", default)]
            class_name: Option<String>,
            #[serde(default)]
            clip_sample: Option<bool>,
        }
        let c: Class = crate::config::parse_config(json, "scheduler_config.json")?;
        let class = c.class_name.unwrap_or_else(|| "DDIMScheduler".into());
        match class.as_str() {
            "LCMScheduler" => Ok(Self::Lcm(LCMSchedulerConfig::from_json(json)?)),
            "DDIMScheduler" => Ok(Self::Ddim {
                config: DDIMSchedulerConfig::from_json(json)?,
                mapped_from: None,
            }),
            flow if flow.starts_with("FlowMatch") => Err(Error::config(format!(
                "scheduler_config.json: _class_name = {flow:?} is a flow-matching sampler (SD3, \
                 Flux): those models are not supported; use a Stable Diffusion 1.x/2.x-family model"
            ))),
            other => {
                let mut config = DDIMSchedulerConfig::from_json(json)?;
                // Most of these classes have no clip_sample (DDIM's default is true).
                if c.clip_sample.is_none() && other != "DDPMScheduler" {
                    config.clip_sample = false;
                }
                if ENDS_AT_CLEAN.contains(&other) {
                    config.set_alpha_to_one = true;
                }
                Ok(Self::Ddim {
                    config,
                    mapped_from: Some(other.to_string()),
                })
            }
        }
    }

    /// What the page and the CLI tell the user about the sampler, when it is
    /// not the one the folder names.
    pub fn note(&self) -> Option<String> {
        let Self::Ddim {
            config,
            mapped_from: Some(class),
        } = self
        else {
            return None;
        };
        let ends_clean = ENDS_AT_CLEAN.contains(&class.as_str());
        let unknown = if ends_clean || class == "PNDMScheduler" {
            ""
        } else {
            " (not a class this app knows)"
        };
        let ending = if ends_clean {
            ", ending on the clean image as it does"
        } else {
            ""
        };
        Some(format!(
            "the model folder's scheduler is {class}{unknown}; this app samples with DDIM on the \
             same noise schedule ({:?} timestep spacing, steps_offset {}){ending}",
            config.timestep_spacing, config.steps_offset,
        ))
    }

    /// The sampler, ready for `set_timesteps`; `spacing` overrides DDIM's.
    pub fn build(&self, spacing: Option<TimestepSpacing>) -> Result<Scheduler> {
        Ok(match self {
            Self::Ddim { config, .. } => {
                let mut config = config.clone();
                if let Some(s) = spacing {
                    config.timestep_spacing = s;
                }
                Scheduler::Ddim(DDIMScheduler::new(config)?)
            }
            Self::Lcm(c) => Scheduler::Lcm(LCMScheduler::new(c.clone())?),
        })
    }
}

/// The sampler a pipeline runs (see [`SchedulerConfig`]).
#[derive(Debug, Clone)]
pub enum Scheduler {
    Ddim(DDIMScheduler),
    Lcm(LCMScheduler),
}

impl Scheduler {
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        match self {
            Self::Ddim(s) => s.set_timesteps(n),
            Self::Lcm(s) => s.set_timesteps(n),
        }
    }

    pub fn timesteps(&self) -> &[usize] {
        match self {
            Self::Ddim(s) => s.timesteps(),
            Self::Lcm(s) => s.timesteps(),
        }
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        match self {
            Self::Ddim(s) => &s.schedule,
            Self::Lcm(s) => &s.schedule,
        }
    }

    /// Whether the step at `timestep` draws fresh noise: DDIM when `eta > 0`,
    /// LCM on every step but the last.
    pub fn needs_noise(&self, timestep: usize, eta: f64) -> bool {
        match self {
            Self::Ddim(_) => eta > 0.0,
            Self::Lcm(s) => s.needs_noise(timestep),
        }
    }

    /// One step (see [`DDIMScheduler::step`] and [`LCMScheduler::step`]); LCM
    /// ignores `eta`.
    pub fn step<const D: usize>(
        &self,
        model_output: Tensor<D>,
        timestep: usize,
        sample: Tensor<D>,
        eta: f64,
        noise: Option<Tensor<D>>,
    ) -> Result<SchedulerOutput<D>> {
        match self {
            Self::Ddim(s) => s.step(model_output, timestep, sample, eta, noise),
            Self::Lcm(s) => s.step(model_output, timestep, sample, noise),
        }
    }
}

/// What one sampler step returns (diffusers' `*SchedulerOutput`).
#[derive(Debug, Clone)]
pub struct SchedulerOutput<const D: usize> {
    /// x_{t−1}: the input of the next step.
    pub prev_sample: Tensor<D>,
    /// The step's estimate of x₀, e.g. for previews.
    pub pred_original_sample: Tensor<D>,
}

/// Picks `n` inference timesteps out of `T`, highest first, like diffusers'
/// `set_timesteps` (numpy rounding is half-to-even, hence `round_ties_even`).
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    steps_offset: usize,
) -> Result<Vec<usize>> {
    let (t, n) = (num_train_timesteps, num_inference_steps);
    if n == 0 {
        return Err(Error::arg("num_inference_steps must be at least 1"));
    }
    if n > t {
        return Err(Error::arg(format!(
            "num_inference_steps = {n} exceeds num_train_timesteps = {t}: the model was \
             trained on {t} timesteps, so at most {t} steps can be taken"
        )));
    }
    let steps: Vec<i64> = match spacing {
        TimestepSpacing::Linspace => linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|x| x.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            // np.round(np.arange(T, 0, -T / n)) - 1, with numpy's arange length rule.
            let step = -(t as f64 / n as f64);
            let len = ((0.0 - t as f64) / step).ceil() as usize;
            (0..len)
                .map(|i| (t as f64 + i as f64 * step).round_ties_even() as i64 - 1)
                .collect()
        }
    };
    steps
        .into_iter()
        .map(|s| {
            usize::try_from(s).ok().filter(|&s| s < t).ok_or_else(|| {
                Error::config(format!(
                    "{spacing:?} spacing with steps_offset = {steps_offset} gives timestep {s}, \
                         outside 0..{t}; lower steps_offset or num_inference_steps"
                ))
            })
        })
        .collect()
}

/// numpy's `linspace` (endpoint included): `start + i * step`, last value exact.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = end;
    v
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), 0.999) for a continuous ᾱ(s), s ∈ [0, 1].
fn betas_for_alpha_bar(t: usize, alpha_bar: impl Fn(f64) -> f64) -> Vec<f64> {
    (0..t)
        .map(|i| {
            let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}

/// Lin et al. 2023, algorithm 1: shift and scale √ᾱ so that ᾱ_T = 0 while √ᾱ_0
/// is unchanged, then recover the betas.
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut sqrt_ab: Vec<f64> = betas
        .iter()
        .scan(1.0f64, |acc, b| {
            *acc *= 1.0 - b;
            Some(acc.sqrt())
        })
        .collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    for s in &mut sqrt_ab {
        *s = (*s - last) * first / (first - last);
    }
    let ab: Vec<f64> = sqrt_ab.iter().map(|s| s * s).collect();
    std::iter::once(1.0 - ab[0])
        .chain(ab.windows(2).map(|w| 1.0 - w[1] / w[0]))
        .collect()
}

fn check_beta_range(c: &BetaConfig) -> Result<()> {
    let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
    if !ok(c.beta_start) || !ok(c.beta_end) || c.beta_start > c.beta_end {
        return Err(Error::config(format!(
            "beta_start = {} and beta_end = {} must satisfy 0 < beta_start <= beta_end < 1",
            c.beta_start, c.beta_end
        )));
    }
    Ok(())
}

pub(crate) fn check_same_shape<const D: usize>(
    name_a: &str,
    a: &Tensor<D>,
    name_b: &str,
    b: &Tensor<D>,
) -> Result<()> {
    let (da, db) = (a.dims(), b.dims());
    if da != db {
        return Err(Error::Shape(format!(
            "{name_a} has shape {da:?} but {name_b} has shape {db:?}; they must match"
        )));
    }
    Ok(())
}

/// Reads `tensor` back and fails if it holds NaN or infinity. This is a
/// synchronous readback: call it at boundaries (inputs, final latents), not
/// inside the denoising loop.
#[cfg(not(target_family = "wasm"))]
pub fn ensure_finite<const D: usize>(what: &str, tensor: &Tensor<D>) -> Result<()> {
    let values = tensor
        .to_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    finite_or_error(what, &values)
}

/// The async twin of [`ensure_finite`], for the browser.
pub async fn ensure_finite_async<const D: usize>(what: &str, tensor: &Tensor<D>) -> Result<()> {
    let data = tensor
        .to_data_async()
        .await
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    let values = data
        .try_to_vec::<f32>()
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    finite_or_error(what, &values)
}

fn finite_or_error(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite(format!(
            "{what} holds {} at flat index {i} ({} of {} values are not finite)",
            values[i],
            values.iter().filter(|v| !v.is_finite()).count(),
            values.len()
        ))),
    }
}
