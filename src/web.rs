//! The `#[wasm_bindgen]` facade: thin wrappers that turn crate errors into
//! JS errors. No logic lives here.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::{Device, Tensor};
use wasm_bindgen::prelude::*;

use crate::image::{mask_to_tensor, rgba_to_tensor, tensor_values_to_rgba};
use crate::models::clip::ClipTokenizer;
use crate::pipeline::{GenerateOptions, PipelineFiles, Sampling, StableDiffusion};
use crate::{DDIMScheduler, NoiseGenerator};

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// The crate version, for the page footer and bug reports.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The DDIM timesteps for a diffusers `scheduler_config.json` text and a
/// step count, highest first.
#[wasm_bindgen(js_name = ddimTimesteps)]
pub fn ddim_timesteps(config_json: &str, steps: usize) -> Result<Vec<u32>, JsError> {
    let mut s = DDIMScheduler::from_json(config_json).map_err(to_js)?;
    s.set_timesteps(steps).map_err(to_js)?;
    Ok(s.timesteps().iter().map(|&t| t as u32).collect())
}

/// ᾱ_t for every training timestep of a `scheduler_config.json`.
#[wasm_bindgen(js_name = alphasCumprod)]
pub fn alphas_cumprod(config_json: &str) -> Result<Vec<f64>, JsError> {
    let s = DDIMScheduler::from_json(config_json).map_err(to_js)?;
    Ok(s.schedule.alphas_cumprod)
}

/// The first `n` values of the seeded noise stream (see `noise.rs`).
#[wasm_bindgen(js_name = gaussianNoise)]
pub fn gaussian_noise(seed: u64, n: usize) -> Vec<f32> {
    NoiseGenerator::new(seed).sample(n)
}

/// A random seed from the browser's crypto source.
#[wasm_bindgen(js_name = randomSeed)]
pub fn random_seed() -> Result<u32, JsError> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| JsError::new(&format!("no random source: {e}")))?;
    Ok(u32::from_le_bytes(b))
}

/// The CLIP tokenizer of a diffusers `tokenizer/` folder.
#[wasm_bindgen]
pub struct Tokenizer(ClipTokenizer);

#[wasm_bindgen]
impl Tokenizer {
    /// From the texts of `vocab.json`, `merges.txt` and (optional) `tokenizer_config.json`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        vocab_json: &str,
        merges_txt: &str,
        tokenizer_config_json: Option<String>,
    ) -> Result<Tokenizer, JsError> {
        ClipTokenizer::new(vocab_json, merges_txt, tokenizer_config_json.as_deref())
            .map(Tokenizer)
            .map_err(to_js)
    }

    /// `[bos, tokens…, eos, pad…]`, `model_max_length` ids.
    pub fn encode(&self, prompt: &str) -> Vec<u32> {
        self.0.encode(prompt)
    }
}

/// Where the pipeline runs.
#[derive(Clone)]
struct Gpu {
    device: Device,
    adapter: String,
    /// The most bytes one storage buffer binding may hold on this device.
    max_binding: u64,
}

thread_local! {
    /// WebGPU is acquired once per page (Burn's runtime cannot be
    /// re-initialised); a failure is remembered too, so the CPU is used.
    static GPU: RefCell<Option<Result<Gpu, String>>> = const { RefCell::new(None) };
}

/// Set by wgpu when the GPU device is lost (driver reset, tab in background
/// on some systems, ...); every later call reports it instead of hanging.
static LOST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn lost() -> Result<(), JsError> {
    match LOST.lock().ok().and_then(|l| l.clone()) {
        Some(m) => Err(JsError::new(&format!(
            "The GPU device was lost ({m}). Reload the page to start again, or choose the CPU."
        ))),
        None => Ok(()),
    }
}

async fn webgpu() -> Result<Gpu, String> {
    if let Some(g) = GPU.with(|g| g.borrow().clone()) {
        return g;
    }
    let g = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map(|(device, setup)| {
            let info = setup.adapter.get_info();
            let limits = setup.device.limits();
            setup.device.set_device_lost_callback(|reason, message| {
                if let Ok(mut l) = LOST.lock() {
                    *l = Some(format!("{reason:?}: {message}"));
                }
            });
            Gpu {
                device,
                // Browsers often hide the adapter's name; say what is known.
                adapter: [info.name, info.driver]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(", "),
                max_binding: limits
                    .max_storage_buffer_binding_size
                    .min(limits.max_buffer_size),
            }
        })
        .map_err(|e| format!("{e}"));
    GPU.with(|cell| *cell.borrow_mut() = Some(g.clone()));
    g
}

/// Picks the device for a model whose largest tensor is `need` bytes:
/// `backend` is "auto" (WebGPU if usable, else the CPU, with a notice saying
/// why), "webgpu" (an error if unusable) or "cpu".
async fn choose_device(
    backend: &str,
    (tensor, need): (String, u64),
) -> Result<(Device, String, Option<String>), JsError> {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let cpu = || (Device::flex(), "CPU (WebAssembly)".to_string());
    let problem = match backend {
        "cpu" => {
            let (d, name) = cpu();
            return Ok((d, name, None));
        }
        "auto" | "webgpu" => match webgpu().await {
            Ok(g) if g.max_binding >= need => {
                let name = match g.adapter.as_str() {
                    "" => "WebGPU".to_string(),
                    a => format!("WebGPU ({a})"),
                };
                return Ok((g.device, name, None));
            }
            Ok(g) => format!(
                "this GPU{} allows buffers of at most {:.0} MB, but the model's largest \
                 tensor ({tensor}) needs {:.0} MB",
                if g.adapter.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", g.adapter)
                },
                mb(g.max_binding),
                mb(need)
            ),
            Err(e) => format!("WebGPU is not available in this browser or on this GPU ({e})"),
        },
        other => {
            return Err(JsError::new(&format!(
                "unknown backend {other:?}: use \"auto\", \"webgpu\" or \"cpu\""
            )));
        }
    };
    if backend == "webgpu" {
        return Err(JsError::new(&format!("{problem}.")));
    }
    let (d, name) = cpu();
    Ok((
        d,
        name,
        Some(format!(
            "{problem}; running on the CPU instead, which is much slower."
        )),
    ))
}

/// A loaded pipeline and the run in progress. The worker drives it:
/// `start`, then `step` until it returns false (checking for cancel between
/// steps), then `result`.
#[wasm_bindgen]
pub struct Generator {
    sd: Rc<StableDiffusion>,
    run: Option<Sampling>,
    backend: String,
    notice: Option<String>,
}

#[wasm_bindgen]
impl Generator {
    /// Builds the pipeline from a diffusers folder given as
    /// `{ "unet/config.json": Uint8Array, ... }` (see `pipeline::FILES`).
    /// `backend`: "auto" (default: WebGPU, else the CPU), "webgpu" or "cpu".
    pub async fn create(
        files: js_sys::Object,
        backend: Option<String>,
    ) -> Result<Generator, JsError> {
        let parts = PipelineFiles::from_lookup("", |path| {
            let v = js_sys::Reflect::get(&files, &JsValue::from_str(path))
                .map_err(|_| crate::Error::Weights(format!("{path}: not readable")))?;
            Ok((!v.is_undefined() && !v.is_null()).then(|| js_sys::Uint8Array::new(&v).to_vec()))
        })
        .map_err(to_js)?;
        let (device, backend, notice) =
            choose_device(backend.as_deref().unwrap_or("auto"), parts.largest_tensor()).await?;
        let sd = StableDiffusion::load(parts, &device).map_err(to_js)?;
        Ok(Generator {
            sd: Rc::new(sd),
            run: None,
            backend,
            notice,
        })
    }

    /// Where the model runs: "WebGPU", "WebGPU (<adapter>)" or "CPU (WebAssembly)".
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// Why the CPU is used although WebGPU was asked for, if it is.
    #[wasm_bindgen(getter)]
    pub fn notice(&self) -> Option<String> {
        self.notice.clone()
    }

    /// The model's default image size in pixels.
    #[wasm_bindgen(getter, js_name = defaultSize)]
    pub fn default_size(&self) -> usize {
        self.sd.default_size
    }

    /// Starts a run. `options`: `{ prompt, negativePrompt, seed, steps, eta,
    /// guidanceScale, timestepSpacing, width, height, strength }`; `image` and
    /// `mask` (RGBA bytes of `width × height`) select img2img / inpainting.
    pub fn start(
        &mut self,
        options: JsValue,
        image: Option<Vec<u8>>,
        mask: Option<Vec<u8>>,
    ) -> Result<(), JsError> {
        lost()?;
        let o: GenerateOptions = serde_wasm_bindgen::from_value(options)
            .map_err(|e| JsError::new(&format!("bad options: {e}")))?;
        let d = &self.sd.device;
        let size = self.sd.default_size;
        let (w, h) = (o.width.unwrap_or(size), o.height.unwrap_or(size));
        let init = image
            .map(|b| rgba_to_tensor(&b, w, h, d))
            .transpose()
            .map_err(to_js)?;
        let mask = mask
            .map(|b| mask_to_tensor(&b, w, h, d))
            .transpose()
            .map_err(to_js)?;
        self.run = Some(self.sd.start(&o, init, mask).map_err(to_js)?);
        Ok(())
    }

    /// Queues one denoising step on the GPU; false when the run is complete.
    pub fn step(&mut self) -> Result<bool, JsError> {
        lost()?;
        let run = self
            .run
            .as_mut()
            .ok_or_else(|| JsError::new("no run: call start first"))?;
        run.step().map_err(to_js)
    }

    /// Steps done and in total.
    #[wasm_bindgen(js_name = stepsDone)]
    pub fn steps_done(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.steps_done())
    }

    #[wasm_bindgen(js_name = totalSteps)]
    pub fn total_steps(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.total_steps())
    }

    /// Drops the run in progress.
    pub fn cancel(&mut self) {
        self.run = None;
    }

    /// Resolves to the image as RGBA bytes: the final image once all steps
    /// ran, or a preview of the current latents before that.
    pub fn result(&self) -> Result<js_sys::Promise, JsError> {
        lost()?;
        let run = self
            .run
            .as_ref()
            .ok_or_else(|| JsError::new("no run: call start first"))?;
        let image: Tensor<4> = if run.steps_done() == run.total_steps() {
            run.finish()
        } else {
            run.decode()
        };
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let [_, _, h, w] = image.dims();
            let data = image.into_data_async().await.map_err(|e| {
                JsError::new(&format!("reading the image from the GPU failed: {e:?}"))
            })?;
            let values = data
                .try_to_vec::<f32>()
                .map_err(|e| JsError::new(&format!("{e:?}")))?;
            Ok(js_sys::Uint8Array::from(tensor_values_to_rgba(&values, w, h).as_slice()).into())
        }))
    }
}

fn to_js(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}
