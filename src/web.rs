//! The `#[wasm_bindgen]` facade: thin wrappers that turn crate errors into
//! JS errors. No logic lives here.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::{Device, Tensor};
use wasm_bindgen::prelude::*;

use crate::image::{mask_to_tensor, rgba_to_tensor, tensor_values_to_rgba};
use crate::models::clip::ClipTokenizer;
use crate::pipeline::{
    FILES, GenerateOptions, OPTIONAL_FILES, PipelineFiles, Sampling, StableDiffusion,
};
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
    /// A software adapter (the browser's `isFallbackAdapter`, e.g.
    /// SwiftShader): there the wasm CPU path is far faster
    /// (tools/bench_browser.mjs: 21 s vs 0.4 s an image).
    software: bool,
}

thread_local! {
    /// WebGPU is acquired once per page (Burn's runtime cannot be
    /// re-initialised); a failure is remembered too, so the CPU is used.
    static GPU: RefCell<Option<Result<Gpu, String>>> = const { RefCell::new(None) };
}

/// Set by wgpu when the GPU device is lost (driver reset, tab in background
/// on some systems, ...); every later call reports it instead of hanging.
static LOST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn lost_reason() -> Option<String> {
    LOST.lock().ok().and_then(|l| l.clone())
}

fn lost() -> Result<(), JsError> {
    match lost_reason() {
        Some(m) => Err(JsError::new(&format!(
            "The GPU device was lost ({m}). Reload the page to start again, or choose the CPU."
        ))),
        None => Ok(()),
    }
}

async fn webgpu() -> Result<Gpu, String> {
    // A lost device stays lost for this page: "auto" then picks the CPU.
    if let Some(m) = lost_reason() {
        return Err(format!("the GPU device was lost: {m}"));
    }
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
                software: info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu,
            }
        })
        .map_err(|e| format!("{e}"));
    GPU.with(|cell| *cell.borrow_mut() = Some(g.clone()));
    g
}

/// Picks the device for a model whose largest tensor is `need` bytes:
/// `backend` is "auto" (WebGPU if usable and not a software adapter, else the
/// CPU, with a notice saying why), "webgpu" (an error if unusable) or "cpu".
/// Returns the device, its name and the notice.
async fn choose_device(
    backend: &str,
    (tensor, need): (String, u64),
) -> Result<(Device, String, Option<String>), JsError> {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let cpu = |notice| Ok((Device::flex(), "CPU (WebAssembly)".to_string(), notice));
    if !matches!(backend, "auto" | "webgpu" | "cpu") {
        return Err(JsError::new(&format!(
            "unknown backend {backend:?}: use \"auto\", \"webgpu\" or \"cpu\""
        )));
    }
    if backend == "cpu" {
        return cpu(None);
    }
    let problem = match webgpu().await {
        Ok(g) if g.max_binding < need => format!(
            "this GPU allows buffers of at most {:.0} MB, but the model's largest tensor \
             ({tensor}) needs {:.0} MB",
            mb(g.max_binding),
            mb(need)
        ),
        Ok(g) if g.software && backend == "auto" => {
            return cpu(Some(
                "The only WebGPU adapter here is a software renderer, slower than the CPU \
                 path, so the CPU is used (ask for \"webgpu\" to force it)."
                    .into(),
            ));
        }
        Ok(g) => {
            let name = match g.adapter.as_str() {
                "" => "WebGPU".to_string(),
                a => format!("WebGPU ({a})"),
            };
            return Ok((g.device, name, None));
        }
        Err(e) => format!("WebGPU is not available in this browser or on this GPU ({e})"),
    };
    if backend == "webgpu" {
        return Err(JsError::new(&format!("{problem}.")));
    }
    cpu(Some(format!("{problem}; running on the CPU instead.")))
}

/// A loaded pipeline and the run in progress.
///
/// Two ways to drive it. One call: `await generator.generate(options, image,
/// mask, onStep, preview)` runs every step, calls `onStep(done, total,
/// previewRgba?)` after each and yields to the event loop between steps, so
/// `generator.cancel()` from a callback or another task stops it (it then
/// resolves to `undefined`). Or step by step, as the page's worker does:
/// `start`, `step` until it returns false, `result`.
#[wasm_bindgen]
pub struct Generator {
    sd: Rc<StableDiffusion>,
    run: RefCell<Option<Sampling>>,
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
        Self::build(parts, backend).await
    }

    /// Downloads a diffusers folder with `fetch` and builds the pipeline.
    /// `base` is the folder's URL (absolute, e.g. a CDN's `…/resolve/main/`,
    /// or relative to the page); `onProgress(file, loadedBytes, totalBytes)`
    /// is called as bytes arrive (total is 0 without a Content-Length).
    #[wasm_bindgen(js_name = fromUrl)]
    pub async fn from_url(
        base: String,
        backend: Option<String>,
        on_progress: Option<js_sys::Function>,
    ) -> Result<Generator, JsError> {
        let mut files = std::collections::HashMap::new();
        let all = FILES.iter().map(|p| (*p, false));
        for (path, optional) in all.chain(OPTIONAL_FILES.iter().map(|p| (*p, true))) {
            if let Some(b) = fetch::bytes(&base, path, optional, on_progress.as_ref()).await? {
                files.insert(path, b);
            }
        }
        let parts = PipelineFiles::from_lookup(&base, |p| Ok(files.remove(p))).map_err(to_js)?;
        Self::build(parts, backend).await
    }

    async fn build(parts: PipelineFiles, backend: Option<String>) -> Result<Generator, JsError> {
        let (device, backend, notice) =
            choose_device(backend.as_deref().unwrap_or("auto"), parts.largest_tensor()).await?;
        let sd = StableDiffusion::load(parts, &device).map_err(to_js)?;
        Ok(Generator {
            sd: Rc::new(sd),
            run: RefCell::new(None),
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
        &self,
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
        *self.run.borrow_mut() = Some(self.sd.start(&o, init, mask).map_err(to_js)?);
        Ok(())
    }

    /// Queues one denoising step on the GPU; false when the run is complete.
    pub fn step(&self) -> Result<bool, JsError> {
        lost()?;
        self.run
            .borrow_mut()
            .as_mut()
            .ok_or_else(|| JsError::new("no run: call start first"))?
            .step()
            .map_err(to_js)
    }

    /// Steps done and in total.
    #[wasm_bindgen(js_name = stepsDone)]
    pub fn steps_done(&self) -> usize {
        self.run.borrow().as_ref().map_or(0, |r| r.steps_done())
    }

    #[wasm_bindgen(js_name = totalSteps)]
    pub fn total_steps(&self) -> usize {
        self.run.borrow().as_ref().map_or(0, |r| r.total_steps())
    }

    /// Drops the run in progress.
    pub fn cancel(&self) {
        *self.run.borrow_mut() = None;
    }

    /// Resolves to the image as RGBA bytes: the final image once all steps
    /// ran, or a preview of the current latents before that.
    pub fn result(&self) -> Result<js_sys::Promise, JsError> {
        let image = self.image()?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            Ok(js_sys::Uint8Array::from(to_rgba(image).await?.as_slice()).into())
        }))
    }

    /// Runs a whole generation (see the type's docs); resolves to the RGBA
    /// bytes, or `undefined` if `cancel()` was called meanwhile.
    pub async fn generate(
        &self,
        options: JsValue,
        image: Option<Vec<u8>>,
        mask: Option<Vec<u8>>,
        on_step: Option<js_sys::Function>,
        preview: Option<bool>,
    ) -> Result<Option<js_sys::Uint8Array>, JsError> {
        self.start(options, image, mask)?;
        let total = self.total_steps();
        loop {
            let more = self.step()?;
            if let Some(f) = &on_step {
                let rgba = if more && preview.unwrap_or(false) {
                    js_sys::Uint8Array::from(to_rgba(self.image()?).await?.as_slice()).into()
                } else {
                    JsValue::UNDEFINED
                };
                f.call3(
                    &JsValue::NULL,
                    &JsValue::from(self.steps_done() as u32),
                    &JsValue::from(total as u32),
                    &rgba,
                )
                .map_err(|e| JsError::new(&format!("onStep threw: {e:?}")))?;
            }
            fetch::next_tick().await;
            if self.run.borrow().is_none() {
                return Ok(None);
            }
            if !more {
                break;
            }
        }
        let rgba = to_rgba(self.image()?).await?;
        Ok(Some(js_sys::Uint8Array::from(rgba.as_slice())))
    }

    /// The final image if the run is complete, else the current preview.
    fn image(&self) -> Result<Tensor<4>, JsError> {
        lost()?;
        let run = self.run.borrow();
        let run = run
            .as_ref()
            .ok_or_else(|| JsError::new("no run: call start first"))?;
        Ok(if run.steps_done() == run.total_steps() {
            run.finish()
        } else {
            run.decode()
        })
    }
}

/// Reads an image tensor back from the device as RGBA bytes.
async fn to_rgba(image: Tensor<4>) -> Result<Vec<u8>, JsError> {
    let [_, _, h, w] = image.dims();
    let data = image
        .into_data_async()
        .await
        .map_err(|e| JsError::new(&format!("reading the image from the GPU failed: {e:?}")))?;
    let values = data
        .try_to_vec::<f32>()
        .map_err(|e| JsError::new(&format!("{e:?}")))?;
    Ok(tensor_values_to_rgba(&values, w, h))
}

/// `fetch` from a window or a worker, with byte progress.
mod fetch {
    use js_sys::{Function, Promise, Reflect, Uint8Array};
    use wasm_bindgen::prelude::*;
    use wasm_bindgen_futures::JsFuture;

    fn global(name: &str) -> Result<JsValue, JsError> {
        Reflect::get(&js_sys::global(), &JsValue::from_str(name))
            .map_err(|_| JsError::new(&format!("no global {name}")))
    }

    fn message(e: &JsValue) -> String {
        Reflect::get(e, &JsValue::from_str("message"))
            .ok()
            .and_then(|m| m.as_string())
            .unwrap_or_else(|| format!("{e:?}"))
    }

    /// Resolves `path` against `base`, itself resolved against the page.
    fn resolve(base: &str, path: &str) -> Result<String, JsError> {
        let here = Reflect::get(&global("location")?, &JsValue::from_str("href"))
            .ok()
            .and_then(|h| h.as_string())
            .unwrap_or_default();
        let base = web_sys::Url::new_with_base(base, &here)
            .map_err(|e| JsError::new(&format!("bad model URL {base:?}: {}", message(&e))))?;
        let url = web_sys::Url::new_with_base(path, &base.href())
            .map_err(|e| JsError::new(&format!("bad URL {path:?}: {}", message(&e))))?;
        Ok(url.href())
    }

    /// One file's bytes; `None` for an optional file that is not there (404).
    pub async fn bytes(
        base: &str,
        path: &str,
        optional: bool,
        on_progress: Option<&Function>,
    ) -> Result<Option<Vec<u8>>, JsError> {
        let url = resolve(base, path)?;
        let fetch: Function = global("fetch")?.into();
        let res = JsFuture::from(Promise::from(
            fetch
                .call1(&JsValue::NULL, &JsValue::from_str(&url))
                .map_err(|e| JsError::new(&format!("could not reach {url}: {}", message(&e))))?,
        ))
        .await
        .map_err(|e| JsError::new(&format!("could not reach {url}: {}", message(&e))))?;
        let res: web_sys::Response = res.into();
        if !res.ok() {
            if optional && res.status() == 404 {
                return Ok(None);
            }
            return Err(JsError::new(&format!(
                "{url}: HTTP {} {}",
                res.status(),
                res.status_text()
            )));
        }
        let total: f64 = res
            .headers()
            .get("content-length")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let body = res
            .body()
            .ok_or_else(|| JsError::new(&format!("{url}: empty response")))?;
        let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        let mut out = Vec::new();
        loop {
            let chunk = JsFuture::from(reader.read())
                .await
                .map_err(|e| JsError::new(&format!("{url}: download failed: {}", message(&e))))?;
            if Reflect::get(&chunk, &JsValue::from_str("done"))
                .map(|d| d.is_truthy())
                .unwrap_or(true)
            {
                break;
            }
            let value = Reflect::get(&chunk, &JsValue::from_str("value"))
                .map_err(|_| JsError::new(&format!("{url}: unreadable chunk")))?;
            out.extend_from_slice(&Uint8Array::new(&value).to_vec());
            if let Some(f) = on_progress {
                // A throwing progress callback must not stop the download.
                let _ = f.call3(
                    &JsValue::NULL,
                    &JsValue::from_str(path),
                    &JsValue::from(out.len() as f64),
                    &JsValue::from(total),
                );
            }
        }
        if total > 0.0 && out.len() as f64 != total {
            return Err(JsError::new(&format!(
                "{url}: download stopped at {} of {total} bytes",
                out.len()
            )));
        }
        Ok(Some(out))
    }

    /// Resolves on the next turn of the event loop (setTimeout 0), so that
    /// messages and UI events (a cancel) get in between steps.
    pub async fn next_tick() {
        let promise = Promise::new(&mut |resolve, _| {
            if let Ok(f) = global("setTimeout").map(Function::from) {
                let _ = f.call2(&JsValue::NULL, &resolve, &JsValue::from(0));
            } else {
                let _ = resolve.call0(&JsValue::NULL);
            }
        });
        let _ = JsFuture::from(promise).await;
    }
}

fn to_js(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}
