//! DDIM/DDPM parity with diffusers 0.42 (fixtures from
//! `tools/make_scheduler_fixtures.py`).
//!
//! Error measure: max |ours − reference| / max(max |reference|, 1) over a tensor.
//!
//! Two references per step, both fed the same inputs:
//! - diffusers' own scheduler code run in float64 (`*_f64`): the reference for
//!   our design (f64 schedule, f32 tensor math). Tolerance `REL_TOL` = 1e-5.
//! - stock diffusers (its schedule rounded to f32, as users run it). Its f32
//!   ᾱ near 1 loses digits in 1 − ᾱ (e.g. ᾱ₀ of the cosine schedule), so it
//!   sits up to ~2e-5 from the f64 truth; tolerance `STOCK_TOL` = 5e-5.

use burn::tensor::{Device, Tensor, TensorData};
use latent_diffusion_web::{DDIMScheduler, DDPMScheduler};
use serde_json::Value;

const REL_TOL: f64 = 1e-5;
const STOCK_TOL: f64 = 5e-5;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/schedulers.json"
    ))
    .expect("fixture tests/fixtures/schedulers.json");
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor(v: &Value, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(floats(v), shape), device)
}

fn values(t: &Tensor<4>) -> Vec<f32> {
    t.to_data().try_to_vec::<f32>().unwrap()
}

/// max |a − b| / max(max |b|, 1)
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs() as f64));
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

enum Sched {
    Ddim(DDIMScheduler),
    Ddpm(DDPMScheduler),
}

impl Sched {
    fn from_case(case: &Value) -> Self {
        let config = case["config"].to_string();
        let steps = case["num_inference_steps"].as_u64().map(|n| n as usize);
        match case["scheduler"].as_str().unwrap() {
            "DDIMScheduler" => {
                let mut s = DDIMScheduler::from_json(&config).unwrap();
                s.set_timesteps(steps.unwrap()).unwrap();
                Sched::Ddim(s)
            }
            "DDPMScheduler" => {
                let mut s = DDPMScheduler::from_json(&config).unwrap();
                if let Some(n) = steps {
                    s.set_timesteps(n).unwrap();
                }
                Sched::Ddpm(s)
            }
            other => panic!("unknown scheduler {other}"),
        }
    }

    fn timesteps(&self) -> &[usize] {
        match self {
            Sched::Ddim(s) => s.timesteps(),
            Sched::Ddpm(s) => s.timesteps(),
        }
    }

    fn alphas_cumprod(&self) -> &[f64] {
        match self {
            Sched::Ddim(s) => &s.schedule.alphas_cumprod,
            Sched::Ddpm(s) => &s.schedule.alphas_cumprod,
        }
    }

    fn step(
        &self,
        out: Tensor<4>,
        t: usize,
        x: Tensor<4>,
        eta: f64,
        z: Option<Tensor<4>>,
    ) -> (Tensor<4>, Tensor<4>) {
        let o = match self {
            Sched::Ddim(s) => s.step(out, t, x, eta, z),
            Sched::Ddpm(s) => s.step(out, t, x, z),
        }
        .unwrap();
        (o.prev_sample, o.pred_original_sample)
    }
}

#[test]
fn matches_diffusers_on_every_case_and_step() {
    let device = Device::flex();
    let doc = fixture();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 40, "fixture has only {} cases", cases.len());
    let mut worst = (0.0f64, String::new());
    let mut worst_stock = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let sched = Sched::from_case(case);
        let shape: [usize; 4] = serde_json::from_value(case["shape"].clone()).unwrap();
        let eta = case["eta"].as_f64().unwrap();

        let expected_t: Vec<usize> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        assert_eq!(
            sched.timesteps(),
            expected_t.as_slice(),
            "{name}: timesteps"
        );

        // ᾱ: equal to diffusers-in-f64 up to rounding, and to stock diffusers' f32 cumprod.
        let idx: Vec<usize> = serde_json::from_value(case["alphas_cumprod_at"].clone()).unwrap();
        let f64s = |k: &str| -> Vec<f64> { serde_json::from_value(case[k].clone()).unwrap() };
        for ((i, want64), want32) in idx
            .iter()
            .zip(f64s("alphas_cumprod_f64"))
            .zip(f64s("alphas_cumprod"))
        {
            let got = sched.alphas_cumprod()[*i];
            assert!(
                (got - want64).abs() <= 1e-12,
                "{name}: alphas_cumprod[{i}] = {got}, diffusers f64 {want64}"
            );
            assert!(
                (got - want32).abs() <= 2e-6 * want32.max(1e-3),
                "{name}: alphas_cumprod[{i}] = {got}, diffusers {want32}"
            );
        }

        let steps = case["steps"].as_array().unwrap();
        let mut own = tensor(&steps[0]["sample"], shape, &device);
        for step in steps {
            let t = step["t"].as_u64().unwrap() as usize;
            let out = tensor(&step["model_output"], shape, &device);
            let z = step
                .get("variance_noise")
                .map(|z| tensor(z, shape, &device));
            // Step-local: diffusers' own input sample.
            let x = tensor(&step["sample"], shape, &device);
            let (prev, x0) = sched.step(out.clone(), t, x, eta, z.clone());
            for (got, key) in [(&prev, "prev_sample"), (&x0, "pred_original_sample")] {
                let got = values(got);
                let err = rel_err(&got, &floats(&step[format!("{key}_f64").as_str()]));
                if err > worst.0 {
                    worst = (err, format!("{name} t={t} {key}"));
                }
                assert!(
                    err <= REL_TOL,
                    "{name} t={t} {key}: rel err {err:e} vs diffusers f64"
                );
                let err = rel_err(&got, &floats(&step[key]));
                worst_stock = worst_stock.max(err);
                assert!(
                    err <= STOCK_TOL,
                    "{name} t={t} {key}: rel err {err:e} vs stock diffusers"
                );
            }
            // Trajectory: our own previous output as input.
            own = sched.step(out, t, own, eta, z).0;
        }
        let err = rel_err(&values(&own), &floats(&case["final_sample_f64"]));
        assert!(
            err <= REL_TOL,
            "{name}: trajectory end rel err {err:e} vs diffusers f64"
        );
        let last = steps.last().unwrap();
        let err = rel_err(&values(&own), &floats(&last["prev_sample"]));
        assert!(
            err <= STOCK_TOL,
            "{name}: trajectory end rel err {err:e} vs stock diffusers"
        );
    }
    println!(
        "{} cases; worst step error vs diffusers f64 {:e} at {}; vs stock diffusers {:e}",
        cases.len(),
        worst.0,
        worst.1,
        worst_stock
    );
}

/// diffusers' `dummy_sample_deter`: arange(768) laid out (c, h, w, b), / 768,
/// permuted to (b, c, h, w). `flip` gives `dummy_noise_deter`.
fn dummy_deter(flip: bool, device: &Device) -> Tensor<4> {
    let (b, c, h, w) = (4, 3, 8, 8);
    let n = b * c * h * w;
    let mut v = vec![0f32; n];
    for ci in 0..c {
        for hi in 0..h {
            for wi in 0..w {
                for bi in 0..b {
                    let src = ((ci * h + hi) * w + wi) * b + bi;
                    let val = if flip { n - 1 - src } else { src };
                    v[((bi * c + ci) * h + hi) * w + wi] = val as f32 / n as f32;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [b, c, h, w]), device)
}

fn abs_sum_mean(t: &Tensor<4>) -> (f64, f64) {
    let v = values(t);
    let s: f64 = v.iter().map(|x| x.abs() as f64).sum();
    (s, s / v.len() as f64)
}

/// The numbers asserted by diffusers' own tests/schedulers/test_scheduler_ddim.py
/// (dummy model `x * t / (t + 1)`, 10 steps, eta 0), with its tolerances.
#[test]
fn reproduces_diffusers_ddim_test_numbers() {
    let device = Device::flex();
    let base = r#"{"num_train_timesteps":1000,"beta_start":0.0001,"beta_end":0.02,"beta_schedule":"linear","clip_sample":true"#;
    let cases = [
        ("no_noise", "", 172.0067, 0.223967),
        (
            "v_prediction",
            r#","prediction_type":"v_prediction""#,
            52.5302,
            0.0684,
        ),
        (
            "set_alpha_to_one",
            r#","set_alpha_to_one":true,"beta_start":0.01"#,
            149.8295,
            0.1951,
        ),
        (
            "no_set_alpha_to_one",
            r#","set_alpha_to_one":false,"beta_start":0.01"#,
            149.0784,
            0.1941,
        ),
        ("with_noise", "", 354.5418, 0.4616),
    ];
    let recomputed = &fixture()["published"];
    for (name, extra, want_sum, want_mean) in cases {
        // serde_json keeps the last of duplicated keys, like a Python dict update.
        let mut s = DDIMScheduler::from_json(&format!("{base}{extra}}}")).unwrap();
        s.set_timesteps(10).unwrap();
        let mut x = dummy_deter(false, &device);
        let mut ts = s.timesteps().to_vec();
        if name == "with_noise" {
            ts = ts[8..].to_vec();
            x = s
                .schedule
                .add_noise(x, dummy_deter(true, &device), &ts[..1])
                .unwrap();
        }
        for &t in &ts {
            let out = x.clone().mul_scalar(t as f32 / (t as f32 + 1.0));
            x = s.step(out, t, x, 0.0, None).unwrap().prev_sample;
        }
        let (sum, mean) = abs_sum_mean(&x);
        assert!(
            (sum - want_sum).abs() < 1e-2,
            "{name}: sum {sum} vs {want_sum}"
        );
        assert!(
            (mean - want_mean).abs() < 1e-3,
            "{name}: mean {mean} vs {want_mean}"
        );
        let rsum = recomputed[name]["sum"].as_f64().unwrap();
        assert!(
            (sum - rsum).abs() / rsum < 1e-5,
            "{name}: sum {sum} vs diffusers 0.42 {rsum}"
        );
    }
}

/// diffusers' `test_variance`: σ² between two given timesteps.
#[test]
fn ddim_variance_matches_diffusers_test() {
    let s = DDIMScheduler::from_json("{}").unwrap();
    let ac = &s.schedule.alphas_cumprod;
    let var = |t: usize, p: usize| (1.0 - ac[p]) / (1.0 - ac[t]) * (1.0 - ac[t] / ac[p]);
    for (t, p, want) in [
        (420, 400, 0.14771),
        (980, 960, 0.32460),
        (487, 486, 0.00979),
        (999, 998, 0.02),
    ] {
        assert!(
            (var(t, p) - want).abs() < 1e-5,
            "variance({t}, {p}) = {}",
            var(t, p)
        );
    }
    // The step's own σ with eta = 1 at t = 420 of 50 steps (prev = 400).
    let mut s = s;
    s.set_timesteps(50).unwrap();
    let c = s.coefficients(420, 1.0).unwrap();
    assert!((c.std_dev * c.std_dev - 0.14771).abs() < 1e-5);
}

#[test]
fn diffusers_steps_offset_example() {
    let mut s = DDIMScheduler::from_json(r#"{"steps_offset": 1}"#).unwrap();
    s.set_timesteps(5).unwrap();
    assert_eq!(s.timesteps(), &[801, 601, 401, 201, 1]);
}

/// Scheduler classes of the real model folders: SD-Turbo's Euler and SD 1.5's
/// PNDM run as DDIM on their schedules (with a note), LCM as LCM, and a
/// flow-matching sampler is refused.
#[test]
fn scheduler_classes_of_real_folders() {
    use latent_diffusion_web::schedulers::{SchedulerConfig, TimestepSpacing};
    let read =
        |p: &str| std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let turbo = SchedulerConfig::from_json(&read(
        "tests/fixtures/layouts/sd-turbo/scheduler/scheduler_config.json",
    ))
    .unwrap();
    let SchedulerConfig::Ddim {
        config,
        mapped_from,
    } = &turbo
    else {
        panic!("{turbo:?}")
    };
    assert_eq!(mapped_from.as_deref(), Some("EulerDiscreteScheduler"));
    // Euler ends at σ = 0 (the clean image) and does not clip.
    assert!(config.set_alpha_to_one && !config.clip_sample);
    assert_eq!(config.timestep_spacing, TimestepSpacing::Trailing);
    let note = turbo.note().unwrap();
    assert!(
        note.contains("EulerDiscreteScheduler") && note.contains("Trailing"),
        "{note}"
    );
    let mut s = turbo.build(None).unwrap();
    s.set_timesteps(1).unwrap();
    assert_eq!(s.timesteps(), &[999]);

    let pndm = r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
        "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#;
    let pndm = SchedulerConfig::from_json(pndm).unwrap();
    let SchedulerConfig::Ddim { config, .. } = &pndm else {
        panic!()
    };
    assert!(!config.set_alpha_to_one, "PNDM keeps its final alpha");
    assert!(pndm.note().unwrap().contains("PNDMScheduler"));
    let mut s = pndm.build(None).unwrap();
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps(), &[751, 501, 251, 1]);

    let lcm = SchedulerConfig::from_json(&read(
        "tests/fixtures/pipelines/tiny-lcm/scheduler/scheduler_config.json",
    ))
    .unwrap();
    assert!(matches!(lcm, SchedulerConfig::Lcm(_)) && lcm.note().is_none());
    let mut s = lcm.build(None).unwrap();
    let e = s.set_timesteps(51).unwrap_err().to_string();
    assert!(e.contains("steps = 51") && e.contains("50-step"), "{e}");
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps(), &[999, 759, 499, 259]);

    let plain = SchedulerConfig::from_json(r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
    assert!(plain.note().is_none());
    let unknown = SchedulerConfig::from_json(r#"{"_class_name": "MadeUpScheduler"}"#).unwrap();
    assert!(
        unknown
            .note()
            .unwrap()
            .contains("not a class this app knows")
    );
    let flow = SchedulerConfig::from_json(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler"}"#);
    assert!(flow.unwrap_err().to_string().contains("flow-matching"));
}
