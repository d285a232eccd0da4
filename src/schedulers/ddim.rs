//! Denoising Diffusion Implicit Models (Song et al. 2021), the twin of
//! diffusers' `scheduling_ddim.py`.

use burn::tensor::Tensor;
use serde::Deserialize;

use super::{
    BetaConfig, BetaSchedule, NoiseSchedule, PredictionType, SchedulerOutput, TimestepSpacing,
    check_same_shape, spaced_timesteps,
};
use crate::config::parse_config;
use crate::error::{Error, Result};

/// `scheduler/scheduler_config.json` for a `DDIMScheduler`: diffusers' keys
/// and class defaults. Keys it does not know are ignored, as diffusers does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DDIMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub timestep_spacing: TimestepSpacing,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDIMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
        }
    }
}

impl DDIMSchedulerConfig {
    /// Parses a diffusers `scheduler_config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        parse_config(json, "scheduler_config.json")
    }

    pub(crate) fn beta_config(&self) -> BetaConfig {
        BetaConfig {
            num_train_timesteps: self.num_train_timesteps,
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            beta_schedule: self.beta_schedule,
            trained_betas: self.trained_betas.clone(),
            rescale_betas_zero_snr: self.rescale_betas_zero_snr,
        }
    }
}

/// The DDIM sampler. Build it, call [`set_timesteps`](Self::set_timesteps),
/// then [`step`](Self::step) once per entry of [`timesteps`](Self::timesteps).
#[derive(Debug, Clone)]
pub struct DDIMScheduler {
    pub config: DDIMSchedulerConfig,
    pub schedule: NoiseSchedule,
    /// ᾱ used after the last step: 1, or ᾱ_0 when `set_alpha_to_one` is false.
    pub final_alpha_cumprod: f64,
    timesteps: Vec<usize>,
}

impl DDIMScheduler {
    /// Builds the scheduler and its f64 schedule; fails on an unsupported or
    /// inconsistent config.
    pub fn new(config: DDIMSchedulerConfig) -> Result<Self> {
        if config.thresholding {
            return Err(Error::config(
                "thresholding = true (dynamic thresholding) is not supported; it is meant for \
                 pixel-space models, not latent diffusion. Set it to false",
            ));
        }
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0) {
            return Err(Error::config(format!(
                "clip_sample_range = {} must be a positive number",
                config.clip_sample_range
            )));
        }
        let schedule = NoiseSchedule::new(&config.beta_config())?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            config,
            schedule,
            final_alpha_cumprod,
            timesteps: Vec::new(),
        })
    }

    /// Parses `scheduler_config.json` and builds the scheduler.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(DDIMSchedulerConfig::from_json(json)?)
    }

    /// Chooses the `n` timesteps to sample with, per `timestep_spacing`.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.timesteps = spaced_timesteps(
            self.config.timestep_spacing,
            self.config.num_train_timesteps,
            num_inference_steps,
            self.config.steps_offset,
        )?;
        Ok(())
    }

    /// The timesteps chosen by `set_timesteps`, highest first.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// Number of inference steps set, or 0 before `set_timesteps`.
    pub fn num_inference_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The scalar coefficients of one step (see [`DdimCoefficients`]).
    pub fn coefficients(&self, timestep: usize, eta: f64) -> Result<DdimCoefficients> {
        let n = self.num_inference_steps();
        if n == 0 {
            return Err(Error::arg("call set_timesteps before step"));
        }
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(Error::arg(format!(
                "eta = {eta} must be a finite number >= 0 (0 = DDIM, 1 = DDPM-like)"
            )));
        }
        // diffusers steps back by T // n whatever the spacing (scheduling_ddim.py, `step`).
        let prev = timestep as i64 - (self.config.num_train_timesteps / n) as i64;
        let a_t = self.schedule.alpha_cumprod(timestep)?;
        let a_prev = if prev >= 0 {
            self.schedule.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        // x̂₀ and ε̂ as linear combinations of (sample, model_output); DDIM eq. 12.
        let (x0, eps) = match self.config.prediction_type {
            PredictionType::Epsilon => {
                if a_t == 0.0 {
                    return Err(Error::config(format!(
                        "alphas_cumprod[{timestep}] is 0 (rescale_betas_zero_snr): an epsilon \
                         model cannot predict x0 there; use prediction_type = v_prediction or \
                         leading spacing"
                    )));
                }
                ([1.0 / sa, -sb / sa], [0.0, 1.0])
            }
            PredictionType::Sample => ([0.0, 1.0], [1.0 / sb, -sa / sb]),
            PredictionType::VPrediction => ([sa, -sb], [sb, sa]),
        };
        // σ_t(η), DDIM eq. 16.
        let variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev);
        let std_dev = eta * variance.sqrt();
        let dir = 1.0 - a_prev - std_dev * std_dev;
        if dir < -1e-12 {
            return Err(Error::arg(format!(
                "eta = {eta} is too large at timestep {timestep}: the noise would exceed the \
                 step's variance budget; use eta <= 1"
            )));
        }
        Ok(DdimCoefficients {
            x0,
            eps,
            clip: self
                .config
                .clip_sample
                .then_some(self.config.clip_sample_range),
            sqrt_alpha_prev: a_prev.sqrt(),
            direction: dir.max(0.0).sqrt(),
            std_dev,
        })
    }

    /// One reverse step from `sample` at `timestep` (DDIM eq. 12):
    /// `x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z`, σ = η·σ_DDPM.
    ///
    /// `variance_noise` (z) is required when `eta > 0` and ignored otherwise.
    /// Runs on the tensors' device with no readback; NaNs in the tensors pass
    /// through (check with [`super::ensure_finite`] at the loop's edges).
    pub fn step<const D: usize>(
        &self,
        model_output: Tensor<D>,
        timestep: usize,
        sample: Tensor<D>,
        eta: f64,
        variance_noise: Option<Tensor<D>>,
    ) -> Result<SchedulerOutput<D>> {
        check_same_shape("model_output", &model_output, "sample", &sample)?;
        let c = self.coefficients(timestep, eta)?;
        let noise = match variance_noise {
            Some(z) if c.std_dev > 0.0 => {
                check_same_shape("variance_noise", &z, "sample", &sample)?;
                Some(z)
            }
            None if c.std_dev > 0.0 => {
                return Err(Error::arg(format!(
                    "eta = {eta} > 0 needs variance_noise of the sample's shape"
                )));
            }
            _ => None,
        };
        let combine = |[cs, cm]: [f64; 2]| {
            sample.clone().mul_scalar(cs as f32) + model_output.clone().mul_scalar(cm as f32)
        };
        let mut pred_original_sample = combine(c.x0);
        if let Some(r) = c.clip {
            pred_original_sample = pred_original_sample.clamp(-r as f32, r as f32);
        }
        let pred_epsilon = combine(c.eps);
        let mut prev_sample = pred_original_sample
            .clone()
            .mul_scalar(c.sqrt_alpha_prev as f32)
            + pred_epsilon.mul_scalar(c.direction as f32);
        if let Some(z) = noise {
            prev_sample = prev_sample + z.mul_scalar(c.std_dev as f32);
        }
        Ok(SchedulerOutput {
            prev_sample,
            pred_original_sample,
        })
    }
}

/// One DDIM step reduced to scalars: the whole update is
/// `x̂₀ = clip(x0[0]·x + x0[1]·m)`, `ε̂ = eps[0]·x + eps[1]·m`,
/// `x' = sqrt_alpha_prev·x̂₀ + direction·ε̂ + std_dev·z`
/// for sample `x`, model output `m` and noise `z`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimCoefficients {
    pub x0: [f64; 2],
    pub eps: [f64; 2],
    pub clip: Option<f64>,
    pub sqrt_alpha_prev: f64,
    pub direction: f64,
    pub std_dev: f64,
}
