//! Denoising Diffusion Probabilistic Models (Ho et al. 2020), the ancestral
//! sampler DDIM is compared against; the twin of diffusers' `scheduling_ddpm.py`.

use burn::tensor::Tensor;
use serde::Deserialize;

use super::{
    BetaConfig, BetaSchedule, NoiseSchedule, PredictionType, SchedulerOutput, TimestepSpacing,
    check_same_shape, spaced_timesteps,
};
use crate::config::parse_config;
use crate::error::{Error, Result};

/// The variance of the added noise at each step (`variance_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum VarianceType {
    /// β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) β_t, the posterior variance (DDPM eq. 7).
    #[default]
    #[serde(rename = "fixed_small")]
    FixedSmall,
    /// The same variance computed through its log (identical samples).
    #[serde(rename = "fixed_small_log")]
    FixedSmallLog,
    /// β_t, the upper bound of DDPM sec. 3.2.
    #[serde(rename = "fixed_large")]
    FixedLarge,
    /// Not supported: diffusers takes the square root of a log here (NaN).
    #[serde(rename = "fixed_large_log")]
    FixedLargeLog,
    /// Not supported: needs a model that predicts its variance.
    #[serde(rename = "learned")]
    Learned,
    /// Not supported: needs a model that predicts its variance.
    #[serde(rename = "learned_range")]
    LearnedRange,
}

/// `scheduler_config.json` for a `DDPMScheduler`, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DDPMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub variance_type: VarianceType,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDPMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl DDPMSchedulerConfig {
    /// Parses a diffusers `scheduler_config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        parse_config(json, "scheduler_config.json")
    }
}

/// The DDPM ancestral sampler. Until `set_timesteps` is called it walks all
/// `num_train_timesteps` steps, as diffusers does.
#[derive(Debug, Clone)]
pub struct DDPMScheduler {
    pub config: DDPMSchedulerConfig,
    pub schedule: NoiseSchedule,
    timesteps: Vec<usize>,
}

impl DDPMScheduler {
    /// Builds the scheduler; fails on an unsupported or inconsistent config.
    pub fn new(config: DDPMSchedulerConfig) -> Result<Self> {
        match config.variance_type {
            VarianceType::FixedSmall | VarianceType::FixedSmallLog | VarianceType::FixedLarge => {}
            other => {
                return Err(Error::config(format!(
                    "variance_type = {other:?} is not supported; use fixed_small or fixed_large"
                )));
            }
        }
        if config.thresholding {
            return Err(Error::config(
                "thresholding = true (dynamic thresholding) is not supported; set it to false",
            ));
        }
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0) {
            return Err(Error::config(format!(
                "clip_sample_range = {} must be a positive number",
                config.clip_sample_range
            )));
        }
        let schedule = NoiseSchedule::new(&BetaConfig {
            num_train_timesteps: config.num_train_timesteps,
            beta_start: config.beta_start,
            beta_end: config.beta_end,
            beta_schedule: config.beta_schedule,
            trained_betas: config.trained_betas.clone(),
            rescale_betas_zero_snr: config.rescale_betas_zero_snr,
        })?;
        let timesteps = (0..config.num_train_timesteps).rev().collect();
        Ok(Self {
            config,
            schedule,
            timesteps,
        })
    }

    /// Parses `scheduler_config.json` and builds the scheduler.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(DDPMSchedulerConfig::from_json(json)?)
    }

    /// Chooses `n` timesteps per `timestep_spacing`; each step then jumps to
    /// the next one in the list.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.timesteps = spaced_timesteps(
            self.config.timestep_spacing,
            self.config.num_train_timesteps,
            num_inference_steps,
            self.config.steps_offset,
        )?;
        Ok(())
    }

    /// The timesteps to visit, highest first.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// Whether the step at `timestep` adds noise (all but the last, t = 0).
    pub fn needs_noise(&self, timestep: usize) -> bool {
        timestep > 0
    }

    /// The timestep after `timestep`, or `None` after the last one.
    fn previous_timestep(&self, timestep: usize) -> Result<Option<usize>> {
        let i = self
            .timesteps
            .iter()
            .position(|&t| t == timestep)
            .ok_or_else(|| {
                Error::arg(format!(
                    "timestep {timestep} is not one of the scheduler's timesteps; step with the \
                     values from timesteps()"
                ))
            })?;
        Ok(self.timesteps.get(i + 1).copied())
    }

    /// One ancestral step: the posterior mean μ̃(x_t, x̂₀) of DDPM eq. 7 plus
    /// `σ_t z` when `t > 0`. `variance_noise` (z) is required exactly then.
    pub fn step<const D: usize>(
        &self,
        model_output: Tensor<D>,
        timestep: usize,
        sample: Tensor<D>,
        variance_noise: Option<Tensor<D>>,
    ) -> Result<SchedulerOutput<D>> {
        check_same_shape("model_output", &model_output, "sample", &sample)?;
        let prev = self.previous_timestep(timestep)?;
        let a_t = self.schedule.alpha_cumprod(timestep)?;
        let a_prev = prev.map_or(1.0, |p| self.schedule.alphas_cumprod[p]);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let [cs, cm] = match self.config.prediction_type {
            PredictionType::Epsilon => {
                if a_t == 0.0 {
                    return Err(Error::config(format!(
                        "alphas_cumprod[{timestep}] is 0 (rescale_betas_zero_snr): an epsilon \
                         model cannot predict x0 there; use prediction_type = v_prediction"
                    )));
                }
                [1.0 / sa, -sb / sa]
            }
            PredictionType::Sample => [0.0, 1.0],
            PredictionType::VPrediction => [sa, -sb],
        };
        let mut pred_original_sample =
            sample.clone().mul_scalar(cs as f32) + model_output.mul_scalar(cm as f32);
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            pred_original_sample = pred_original_sample.clamp(-r, r);
        }
        let x0_coeff = a_prev.sqrt() * cur_beta / b_t;
        let sample_coeff = cur_alpha.sqrt() * b_prev / b_t;
        let mut prev_sample = pred_original_sample.clone().mul_scalar(x0_coeff as f32)
            + sample.clone().mul_scalar(sample_coeff as f32);
        if self.needs_noise(timestep) {
            let z = variance_noise.ok_or_else(|| {
                Error::arg(format!(
                    "timestep {timestep} > 0 needs variance_noise of the sample's shape"
                ))
            })?;
            check_same_shape("variance_noise", &z, "sample", &sample)?;
            let variance = match self.config.variance_type {
                VarianceType::FixedLarge => cur_beta,
                _ => (b_prev / b_t * cur_beta).max(1e-20),
            };
            prev_sample = prev_sample + z.mul_scalar(variance.sqrt() as f32);
        }
        Ok(SchedulerOutput {
            prev_sample,
            pred_original_sample,
        })
    }
}
