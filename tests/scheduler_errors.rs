//! Bad input gets a typed error whose message names the problem, never a panic.

use burn::tensor::{Device, Tensor, TensorData};
use latent_diffusion_web::schedulers::{NoiseSchedule, ensure_finite};
use latent_diffusion_web::{DDIMScheduler, DDPMScheduler, Error, NoiseGenerator};

fn ddim(json: &str) -> Result<DDIMScheduler, Error> {
    DDIMScheduler::from_json(json)
}

fn expect_err<T: std::fmt::Debug>(
    r: Result<T, Error>,
    variant: fn(&Error) -> bool,
    needles: &[&str],
) {
    let e = r.expect_err("expected an error");
    assert!(variant(&e), "wrong error variant: {e:?}");
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should mention {n:?}");
    }
}

fn is_config(e: &Error) -> bool {
    matches!(e, Error::Config(_))
}
fn is_arg(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument(_))
}
fn is_shape(e: &Error) -> bool {
    matches!(e, Error::Shape(_))
}

fn t(seed: u64, shape: [usize; 4]) -> Tensor<4> {
    NoiseGenerator::new(seed).tensor(shape, &Device::flex())
}

#[test]
fn unknown_enum_values_name_the_key() {
    expect_err(
        ddim(r#"{"beta_schedule": "cosine"}"#),
        is_config,
        &["beta_schedule", "cosine", "squaredcos_cap_v2"],
    );
    expect_err(
        ddim(r#"{"timestep_spacing": "even"}"#),
        is_config,
        &["timestep_spacing", "trailing"],
    );
    expect_err(
        ddim(r#"{"prediction_type": "noise"}"#),
        is_config,
        &["prediction_type", "v_prediction"],
    );
    expect_err(
        ddim(r#"{"num_train_timesteps": -5}"#),
        is_config,
        &["num_train_timesteps"],
    );
    expect_err(ddim("{not json"), is_config, &["not valid JSON"]);
    expect_err(
        DDPMScheduler::from_json(r#"{"variance_type": "learned_range"}"#),
        is_config,
        &["variance_type", "not supported"],
    );
}

#[test]
fn unknown_keys_are_ignored_like_diffusers() {
    let s = ddim(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true, "steps_offset": 1}"#)
        .unwrap();
    assert_eq!(s.config.steps_offset, 1);
}

#[test]
fn inconsistent_configs_are_rejected() {
    expect_err(
        ddim(r#"{"beta_start": 0.02, "beta_end": 0.001}"#),
        is_config,
        &["beta_start", "beta_end"],
    );
    expect_err(ddim(r#"{"beta_end": 1.5}"#), is_config, &["beta_end"]);
    expect_err(
        ddim(r#"{"num_train_timesteps": 0}"#),
        is_config,
        &["num_train_timesteps"],
    );
    expect_err(
        ddim(r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#),
        is_config,
        &["trained_betas has 2", "3"],
    );
    expect_err(
        ddim(r#"{"num_train_timesteps": 2, "trained_betas": [0.1, -0.2]}"#),
        is_config,
        &["beta[1]"],
    );
    expect_err(
        ddim(r#"{"thresholding": true}"#),
        is_config,
        &["thresholding"],
    );
    expect_err(
        ddim(r#"{"clip_sample_range": 0}"#),
        is_config,
        &["clip_sample_range"],
    );
}

#[test]
fn bad_step_counts() {
    let mut s = ddim("{}").unwrap();
    expect_err(s.set_timesteps(0), is_arg, &["at least 1"]);
    expect_err(s.set_timesteps(1001), is_arg, &["1001", "1000"]);
    let mut s = ddim(r#"{"steps_offset": 5}"#).unwrap();
    expect_err(s.set_timesteps(1000), is_config, &["steps_offset", "1004"]);
    let mut p = DDPMScheduler::from_json("{}").unwrap();
    expect_err(p.set_timesteps(0), is_arg, &["at least 1"]);
}

#[test]
fn bad_step_arguments() {
    let mut s = ddim("{}").unwrap();
    let x = t(1, [1, 4, 2, 2]);
    expect_err(
        s.step(x.clone(), 981, x.clone(), 0.0, None),
        is_arg,
        &["set_timesteps"],
    );
    s.set_timesteps(50).unwrap();
    expect_err(
        s.step(t(2, [1, 4, 2, 3]), 981, x.clone(), 0.0, None),
        is_shape,
        &["model_output", "[1, 4, 2, 3]"],
    );
    expect_err(
        s.step(x.clone(), 1000, x.clone(), 0.0, None),
        is_arg,
        &["timestep 1000"],
    );
    expect_err(
        s.step(x.clone(), 981, x.clone(), f64::NAN, None),
        is_arg,
        &["eta"],
    );
    expect_err(
        s.step(x.clone(), 981, x.clone(), -0.1, None),
        is_arg,
        &["eta"],
    );
    expect_err(
        s.step(x.clone(), 981, x.clone(), 3.0, Some(x.clone())),
        is_arg,
        &["eta = 3", "too large"],
    );
    expect_err(
        s.step(x.clone(), 981, x.clone(), 0.5, None),
        is_arg,
        &["variance_noise"],
    );
    expect_err(
        s.step(x.clone(), 981, x.clone(), 0.5, Some(t(3, [2, 4, 2, 2]))),
        is_shape,
        &["variance_noise"],
    );

    let mut p = DDPMScheduler::from_json("{}").unwrap();
    p.set_timesteps(10).unwrap();
    expect_err(
        p.step(x.clone(), 550, x.clone(), None),
        is_arg,
        &["timestep 550", "timesteps()"],
    );
    expect_err(
        p.step(x.clone(), 900, x.clone(), None),
        is_arg,
        &["variance_noise"],
    );
    assert!(
        p.step(x.clone(), 0, x.clone(), None).is_ok(),
        "the last step needs no noise"
    );
}

#[test]
fn epsilon_at_zero_terminal_snr_is_an_error_not_nan() {
    let mut s =
        ddim(r#"{"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}"#).unwrap();
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps()[0], 999);
    let x = t(1, [1, 1, 2, 2]);
    expect_err(
        s.step(x.clone(), 999, x, 0.0, None),
        is_config,
        &["v_prediction"],
    );
}

#[test]
fn non_finite_tensors_are_reported() {
    let d = Device::flex();
    let bad = Tensor::<4>::from_data(
        TensorData::new(vec![0.0f32, f32::NAN, 1.0, f32::INFINITY], [1, 1, 2, 2]),
        &d,
    );
    let e = ensure_finite("model_output", &bad).unwrap_err();
    assert!(matches!(e, Error::NonFinite(_)));
    assert!(
        e.to_string().contains("model_output") && e.to_string().contains("2 of 4"),
        "{e}"
    );
    assert!(ensure_finite("sample", &t(1, [1, 1, 2, 2])).is_ok());
}

#[test]
fn add_noise_checks_batch_and_timesteps() {
    let s = ddim("{}").unwrap().schedule;
    let x = t(1, [2, 1, 2, 2]);
    expect_err(
        s.add_noise(x.clone(), t(2, [1, 1, 2, 2]), &[10]),
        is_shape,
        &["noise"],
    );
    expect_err(
        s.add_noise(x.clone(), x.clone(), &[1, 2, 3]),
        is_shape,
        &["3 timesteps", "batch of 2"],
    );
    expect_err(
        s.add_noise(x.clone(), x.clone(), &[1000]),
        is_arg,
        &["timestep 1000"],
    );
}

#[test]
fn forward_process_and_velocity_are_consistent() {
    // x_t = √ᾱ x0 + √(1−ᾱ) ε and v = √ᾱ ε − √(1−ᾱ) x0 give x0 = √ᾱ x_t − √(1−ᾱ) v.
    let s: NoiseSchedule = ddim("{}").unwrap().schedule;
    let (x0, eps) = (t(1, [2, 3, 4, 4]), t(2, [2, 3, 4, 4]));
    let ts = [10usize, 700];
    let xt = s.add_noise(x0.clone(), eps.clone(), &ts).unwrap();
    let v = s.get_velocity(x0.clone(), eps, &ts).unwrap();
    let x0_data = x0.to_data().try_to_vec::<f32>().unwrap();
    let xt_data = xt.to_data().try_to_vec::<f32>().unwrap();
    let v_data = v.to_data().try_to_vec::<f32>().unwrap();
    let per = x0_data.len() / 2;
    for (i, ((x0, xt), v)) in x0_data.iter().zip(&xt_data).zip(&v_data).enumerate() {
        let a = s.alphas_cumprod[ts[i / per]];
        let rec = a.sqrt() * *xt as f64 - (1.0 - a).sqrt() * *v as f64;
        assert!(
            (rec - *x0 as f64).abs() < 1e-5,
            "element {i}: {rec} vs {x0}"
        );
    }
}
