//! Latent Consistency Models (Luo et al. 2023), the twin of diffusers'
//! `scheduling_lcm.py`: multi-step consistency sampling, where every step
//! predicts the clean latents and the next one re-noises them.

use burn::tensor::Tensor;
use serde::Deserialize;

use super::{
    BetaConfig, BetaSchedule, NoiseSchedule, PredictionType, SchedulerOutput, TimestepSpacing,
    check_same_shape,
};
use crate::config::parse_config;
use crate::error::{Error, Result};

/// `scheduler/scheduler_config.json` for an `LCMScheduler`: diffusers' keys and
/// class defaults. Keys it does not know are ignored, as diffusers does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LCMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    /// The length of the schedule the model was distilled on; inference
    /// timesteps are picked from it.
    pub original_inference_steps: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// Unused: the last step returns the denoised estimate itself.
    pub set_alpha_to_one: bool,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    /// Accepted for the config's sake; LCM picks its own timesteps.
    pub timestep_spacing: TimestepSpacing,
    /// Scales the timestep in the boundary-condition weights `c_skip`, `c_out`.
    pub timestep_scaling: f64,
    pub rescale_betas_zero_snr: bool,
}

impl Default for LCMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            original_inference_steps: 50,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            timestep_spacing: TimestepSpacing::Leading,
            timestep_scaling: 10.0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl LCMSchedulerConfig {
    /// Parses a diffusers `scheduler_config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        parse_config(json, "scheduler_config.json")
    }

    fn beta_config(&self) -> BetaConfig {
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

/// The LCM sampler. Build it, call [`set_timesteps`](Self::set_timesteps),
/// then [`step`](Self::step) once per entry of [`timesteps`](Self::timesteps),
/// with fresh noise for every step but the last.
#[derive(Debug, Clone)]
pub struct LCMScheduler {
    pub config: LCMSchedulerConfig,
    pub schedule: NoiseSchedule,
    timesteps: Vec<usize>,
}

impl LCMScheduler {
    /// Builds the scheduler and its f64 schedule; fails on an unsupported or
    /// inconsistent config.
    pub fn new(config: LCMSchedulerConfig) -> Result<Self> {
        if config.thresholding {
            return Err(Error::config(
                "thresholding = true (dynamic thresholding) is not supported; set it to false",
            ));
        }
        let o = config.original_inference_steps;
        if o == 0 || o > config.num_train_timesteps {
            return Err(Error::config(format!(
                "original_inference_steps = {o} must be from 1 to num_train_timesteps = {}",
                config.num_train_timesteps
            )));
        }
        let scaling = config.timestep_scaling;
        if !(scaling.is_finite() && scaling > 0.0) {
            return Err(Error::config(format!(
                "timestep_scaling = {scaling} must be a positive number"
            )));
        }
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0) {
            return Err(Error::config(format!(
                "clip_sample_range = {} must be a positive number",
                config.clip_sample_range
            )));
        }
        let schedule = NoiseSchedule::new(&config.beta_config())?;
        Ok(Self {
            config,
            schedule,
            timesteps: Vec::new(),
        })
    }

    /// Picks `n` timesteps out of the `original_inference_steps` the model was
    /// distilled on (`k − 1, 2k − 1, …` with `k = T / original`), evenly by
    /// index, highest first.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let n = num_inference_steps;
        let original = self.config.original_inference_steps;
        if n == 0 || n > original {
            return Err(Error::arg(format!(
                "steps = {n} must be from 1 to {original}: this LCM model was distilled on a \
                 {original}-step schedule (original_inference_steps)"
            )));
        }
        let k = self.config.num_train_timesteps / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        // np.floor(np.linspace(0, len, n, endpoint=False)): index i·len/n.
        self.timesteps = (0..n)
            .map(|i| origin[(i as f64 * origin.len() as f64 / n as f64).floor() as usize])
            .collect();
        Ok(())
    }

    /// The timesteps chosen by `set_timesteps`, highest first.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The boundary-condition weights at `timestep`: the consistency function
    /// is `c_skip·x + c_out·x̂₀`, which is `x` itself as t → 0.
    pub fn scalings(&self, timestep: usize) -> (f64, f64) {
        let sigma_data = 0.5f64;
        let t = timestep as f64 * self.config.timestep_scaling;
        let c_skip = sigma_data * sigma_data / (t * t + sigma_data * sigma_data);
        let c_out = t / (t * t + sigma_data * sigma_data).sqrt();
        (c_skip, c_out)
    }

    /// One step from `sample` at `timestep`: the denoised estimate
    /// `c_out·x̂₀ + c_skip·x`, then, unless this is the last step, that
    /// estimate noised to the next timestep with `noise` (required then).
    /// `pred_original_sample` of the output is the denoised estimate.
    pub fn step<const D: usize>(
        &self,
        model_output: Tensor<D>,
        timestep: usize,
        sample: Tensor<D>,
        noise: Option<Tensor<D>>,
    ) -> Result<SchedulerOutput<D>> {
        check_same_shape("model_output", &model_output, "sample", &sample)?;
        let Some(index) = self.timesteps.iter().position(|&t| t == timestep) else {
            return Err(Error::arg(format!(
                "timestep {timestep} is not one of this run's timesteps {:?}; call set_timesteps \
                 first",
                self.timesteps
            )));
        };
        let a_t = self.schedule.alpha_cumprod(timestep)?;
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let [cs, cm] = match self.config.prediction_type {
            PredictionType::Epsilon => [1.0 / sa, -sb / sa],
            PredictionType::Sample => [0.0, 1.0],
            PredictionType::VPrediction => [sa, -sb],
        };
        let mut x0 = sample.clone().mul_scalar(cs as f32) + model_output.mul_scalar(cm as f32);
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r);
        }
        let (c_skip, c_out) = self.scalings(timestep);
        let denoised = x0.mul_scalar(c_out as f32) + sample.mul_scalar(c_skip as f32);
        let prev_sample = match self.timesteps.get(index + 1) {
            None => denoised.clone(),
            Some(&next) => {
                let Some(z) = noise else {
                    return Err(Error::arg(
                        "an LCM step before the last needs noise of the sample's shape",
                    ));
                };
                check_same_shape("noise", &z, "sample", &denoised)?;
                let a_prev = self.schedule.alpha_cumprod(next)?;
                denoised.clone().mul_scalar(a_prev.sqrt() as f32)
                    + z.mul_scalar((1.0 - a_prev).sqrt() as f32)
            }
        };
        Ok(SchedulerOutput {
            prev_sample,
            pred_original_sample: denoised,
        })
    }

    /// Whether the step at `timestep` draws noise (every step but the last).
    pub fn needs_noise(&self, timestep: usize) -> bool {
        self.timesteps.last() != Some(&timestep)
    }
}
