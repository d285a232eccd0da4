//! The `#[wasm_bindgen]` facade: thin wrappers that turn crate errors into
//! JS errors. No logic lives here.

use std::cell::RefCell;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use wasm_bindgen::prelude::*;

use crate::image::tensor_values_to_rgba;
use crate::models::attention::set_attention_max_bytes;
use crate::models::clip::ClipTokenizer;
use crate::pipeline::{
    GenerateOptions, LOW_RES_SCHEDULER_FILE, OPTIONAL_FILES, OptionsInput, PipelineConfig,
    PipelineKind, Precision, Sampling, ShardIndex, StableDiffusion, TEXT_FILES, WEIGHT_FILES,
    check_model_index, fp16_variant, largest_tensor, shard_index_path, swapped_vae_path,
    weight_bytes, weight_bytes_as,
};
use crate::prompts::{PromptCheck, PromptVocabulary};
use crate::weights::{Header, WeightFile, WeightReader};
use crate::{DDIMScheduler, NoiseGenerator, run_on_cpu_pool};

/// The message of the last panic, for the page to show after a trap.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

// Static constructors (the `inventory` registrations of Burn's dependencies).
// wasm-ld wraps every export in a call to `__wasm_call_ctors` unless the
// module calls it itself: before this, each call from JS (every `step()`,
// every externref-table helper) re-ran them, a fifth of `start()`'s time in a
// browser profile.
unsafe extern "C" {
    fn __wasm_call_ctors();
}

#[wasm_bindgen(start)]
fn start() {
    // SAFETY: wasm-ld's synthetic function; called once, first, at instantiation.
    unsafe { __wasm_call_ctors() };
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        if let Ok(mut p) = LAST_PANIC.lock() {
            *p = Some(info.to_string());
        }
        #[cfg(feature = "threads")]
        post_pool_panic(&info.to_string());
    }));
}

/// The `BroadcastChannel` a panic on a thread of the pool is posted to (see
/// `setPanicChannel`).
#[cfg(feature = "threads")]
static PANIC_CHANNEL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A panic on one of the pool's Web Workers traps that worker, and the
/// page's worker (the pool's thread 0) waits on forever for its job: only
/// the page can end that. So the panic is posted to the page (a panic on the
/// page's worker itself traps there and is caught as before).
#[cfg(feature = "threads")]
fn post_pool_panic(message: &str) {
    if rayon::current_thread_index().is_none_or(|i| i == 0) {
        return;
    }
    // `try_lock`: a panic while the name was being set must not deadlock here.
    if let Ok(name) = PANIC_CHANNEL.try_lock()
        && let Some(name) = name.as_deref()
        && let Ok(channel) = BroadcastChannel::new(name)
    {
        let _ = channel.post_message(message);
        channel.close();
    }
}

// The few methods of `BroadcastChannel` used above, declared here rather than
// through a web-sys feature: that would rebuild wgpu and Burn's WebGPU
// backend, which depend on web-sys too.
#[cfg(feature = "threads")]
#[wasm_bindgen]
extern "C" {
    type BroadcastChannel;
    #[wasm_bindgen(constructor, catch)]
    fn new(name: &str) -> Result<BroadcastChannel, JsValue>;
    #[wasm_bindgen(method, catch, js_name = postMessage)]
    fn post_message(this: &BroadcastChannel, message: &str) -> Result<(), JsValue>;
    #[wasm_bindgen(method)]
    fn close(this: &BroadcastChannel);
}

/// Names the `BroadcastChannel` on which the threaded module posts a panic on
/// one of its pool's threads (the page listens there: `www/panic-watch.js`),
/// or none. The other module has no pool; there it does nothing.
#[wasm_bindgen(js_name = setPanicChannel)]
pub fn set_panic_channel(name: Option<String>) {
    #[cfg(feature = "threads")]
    if let Ok(mut c) = PANIC_CHANNEL.lock() {
        *c = name;
    }
    #[cfg(not(feature = "threads"))]
    let _ = name;
}

/// What the last panic said (a trap's `RuntimeError` only says
/// "unreachable"); `undefined` if none happened.
#[wasm_bindgen(js_name = lastPanic)]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.lock().ok().and_then(|p| p.clone())
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

/// The most values `gaussianNoise` and `addNoise` handle in one call.
const MAX_VALUES: usize = 1 << 26;

/// The signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) for every training timestep of
/// a `scheduler_config.json`.
#[wasm_bindgen(js_name = signalToNoise)]
pub fn signal_to_noise(config_json: &str) -> Result<Vec<f64>, JsError> {
    let s = DDIMScheduler::from_json(config_json).map_err(to_js)?;
    Ok(s.schedule
        .alphas_cumprod
        .iter()
        .map(|a| a / (1.0 - a))
        .collect())
}

/// The forward process q(x_t | x₀) = √ᾱ_t x₀ + √(1−ᾱ_t) ε on any values
/// (latents, say), ε the seeded noise stream, under a `scheduler_config.json`.
#[wasm_bindgen(js_name = addNoise)]
pub fn add_noise(
    config_json: &str,
    values: Vec<f32>,
    timestep: usize,
    seed: u64,
) -> Result<Vec<f32>, JsError> {
    if values.len() > MAX_VALUES {
        return Err(JsError::new(&format!(
            "addNoise: {} values is more than the {MAX_VALUES} it takes at once",
            values.len()
        )));
    }
    let s = DDIMScheduler::from_json(config_json).map_err(to_js)?;
    s.schedule
        .add_noise_seeded(&values, timestep, seed)
        .map_err(to_js)
}

/// [`add_noise`] on an RGBA image in pixel space (x₀ in [-1, 1]); returns
/// x_t as RGBA (clamped to the displayable range).
#[wasm_bindgen(js_name = addNoiseRgba)]
pub fn add_noise_rgba(
    config_json: &str,
    rgba: Vec<u8>,
    width: usize,
    height: usize,
    timestep: usize,
    seed: u64,
) -> Result<Vec<u8>, JsError> {
    let s = DDIMScheduler::from_json(config_json).map_err(to_js)?;
    crate::image::add_noise_rgba(&s.schedule, &rgba, width, height, timestep, seed).map_err(to_js)
}

/// The first `n` values (at most 2^26) of the seeded noise stream (see `noise.rs`).
#[wasm_bindgen(js_name = gaussianNoise)]
pub fn gaussian_noise(seed: u64, n: usize) -> Result<Vec<f32>, JsError> {
    if n > MAX_VALUES {
        return Err(JsError::new(&format!(
            "gaussianNoise: n = {n} is more than the {MAX_VALUES} values it returns at once"
        )));
    }
    Ok(NoiseGenerator::new(seed).sample(n))
}

/// Panics on purpose: the page's test of its recovery from a trap (the
/// worker is replaced and the next run works) calls it.
#[wasm_bindgen(js_name = debugPanic)]
pub fn debug_panic(message: &str) {
    panic!("{message}");
}

/// Panics on purpose on one of the pool's Web Workers, in a job the page's
/// worker waits for as for a kernel's (the threaded module; the other panics
/// where it is called, as `debugPanic`): the page's test that such a panic
/// is reported instead of leaving the run hanging calls it.
#[wasm_bindgen(js_name = debugPoolPanic)]
pub fn debug_pool_panic(message: &str) {
    #[cfg(feature = "threads")]
    run_on_cpu_pool(|| {
        use std::sync::atomic::{AtomicBool, Ordering};
        if rayon::current_num_threads() < 2 {
            panic!("{message}");
        }
        // Two jobs; the caller's waits until another thread has the other,
        // so that one panics there.
        let taken = AtomicBool::new(false);
        crate::cpu_pool::for_each_chunk_mut(&mut [0u8; 2], 1, |_, _| {
            if rayon::current_thread_index().is_some_and(|i| i != 0) {
                taken.store(true, Ordering::Release);
                panic!("{message}");
            }
            while !taken.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        });
    });
    #[cfg(not(feature = "threads"))]
    panic!("{message}");
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

/// The threaded CPU module has no WebGPU (see the `threads` feature): the
/// page loads it only for the CPU path, and "auto" says so plainly.
#[cfg(not(feature = "webgpu"))]
async fn webgpu() -> Result<Gpu, String> {
    Err("this module is the threaded CPU build, without WebGPU".into())
}

#[cfg(feature = "webgpu")]
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

/// The CPU path's name, with its threads where the module has a pool.
fn cpu_name() -> String {
    #[cfg(feature = "threads")]
    return format!(
        "CPU (WebAssembly, {} threads)",
        rayon::current_num_threads()
    );
    #[cfg(not(feature = "threads"))]
    "CPU (WebAssembly)".to_string()
}

/// The most f32 weight bytes the CPU path accepts: wasm32 memory ends at
/// 4 GiB and the activations of a 512×512 step need several hundred MB.
const CPU_WEIGHT_LIMIT: u64 = 3 << 30;

/// The largest activation the CPU path makes (a few such are alive at once
/// beside the weights, within wasm32's 4 GiB).
const CPU_BUFFER_LIMIT: u64 = 256 << 20;

/// Picks the device for a model whose largest tensor is `need` bytes as f32
/// and whose weights' `headers` say what they take at `precision`:
/// `backend` is "auto" (WebGPU if usable and not a software adapter, else the
/// CPU, with a notice saying why), "webgpu" (an error if unusable) or "cpu".
/// Returns the device, its name, the notice and its per-buffer limit.
async fn choose_device(
    backend: &str,
    (tensor, need): (String, u64),
    headers: &[&Header],
    precision: Precision,
) -> Result<(Device, String, Option<String>, u64), JsError> {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let cpu = |notice: Option<String>| {
        // The CPU path runs f32 unless f16 is asked for (half the memory).
        let (bytes, dtype) = match precision {
            Precision::F16 => (weight_bytes_as(headers, 2), "f16"),
            _ => (weight_bytes(headers), "f32"),
        };
        if bytes > CPU_WEIGHT_LIMIT {
            return Err(JsError::new(&format!(
                "{}This model's weights take {:.1} GB as {dtype}, more than the CPU path can hold \
                 in a browser's WebAssembly memory ({:.1} GB for weights, 4 GB in all); it needs \
                 WebGPU.",
                notice.map(|n| format!("{n} ")).unwrap_or_default(),
                bytes as f64 / 1e9,
                CPU_WEIGHT_LIMIT as f64 / 1e9
            )));
        }
        set_attention_max_bytes(128 << 20);
        Ok((Device::flex(), cpu_name(), notice, CPU_BUFFER_LIMIT))
    };
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
        Ok(g) if g.software && backend == "auto" => return cpu(Some(SOFTWARE_ADAPTER.into())),
        Ok(g) => {
            // Attention slices fit one binding (and at most 256 MiB, to bound
            // the temporaries of softmax on large adapters).
            set_attention_max_bytes(g.max_binding.min(256 << 20));
            let name = match g.adapter.as_str() {
                "" => "WebGPU".to_string(),
                a => format!("WebGPU ({a})"),
            };
            return Ok((g.device, name, None, g.max_binding));
        }
        Err(e) => unavailable(&e),
    };
    if backend == "webgpu" {
        return Err(JsError::new(&format!("{problem}.")));
    }
    cpu(Some(on_the_cpu(&problem)))
}

/// "auto"'s notice on a software adapter.
const SOFTWARE_ADAPTER: &str = "The only WebGPU adapter here is a software renderer, slower \
     than the CPU path, so the CPU is used (ask for \"webgpu\" to force it).";

fn unavailable(e: &str) -> String {
    format!("WebGPU is not available in this browser or on this GPU ({e})")
}

fn on_the_cpu(problem: &str) -> String {
    format!("{problem}; running on the CPU instead.")
}

/// Whether "auto" takes the CPU path whatever the model: the notice it then
/// gives (no WebGPU, or only a software adapter), or `undefined` where a
/// hardware adapter is there (a model may still be too large for it). The
/// page asks before loading, to run the CPU path on the threaded module
/// where it can.
#[wasm_bindgen(js_name = cpuNotice)]
pub async fn cpu_notice() -> Option<String> {
    match webgpu().await {
        Ok(g) if g.software => Some(SOFTWARE_ADAPTER.into()),
        Ok(_) => None,
        Err(e) => Some(on_the_cpu(&unavailable(&e))),
    }
}

/// A loaded pipeline and the run in progress.
///
/// Two ways to drive it. One call: `await generator.generate(options, image,
/// mask, onStep, preview)` runs every step, calls `onStep(done, total,
/// previewRgba?)` after each and yields to the event loop between steps, so
/// `generator.cancel()` from a callback or another task stops it (it then
/// resolves to `undefined`). Or step by step: `start`, `step` until it
/// returns false, `result`. One run at a time: a second `generate()` while
/// one is running is an error, not a mixed-up image.
#[wasm_bindgen]
pub struct Generator {
    sd: Arc<StableDiffusion>,
    run: RefCell<Option<Sampling>>,
    busy: std::cell::Cell<bool>,
    backend: String,
    notice: Option<String>,
}

/// How `fromUrl` downloads and loads: `{ signal?: AbortSignal, cache?:
/// string | false, stallTimeoutMs?: number, vae?: string, precision?:
/// "auto" | "f32" | "f16" }`.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct LoadOptions {
    /// A VAE folder's URL used instead of the model's `vae/` (its
    /// `config.json` and weights at its root, as `madebyollin/taesd`).
    vae: Option<String>,
    /// The Cache API cache weights are kept in (`false`: none).
    cache: Option<serde_json::Value>,
    /// Give up when no byte arrives for this long (default 30 s).
    stall_timeout_ms: Option<f64>,
    /// "auto" (default), "f32" or "f16": the weights' dtype on the device and
    /// the one the networks compute in (see `pipeline::Precision`).
    precision: Option<String>,
}

impl LoadOptions {
    /// The names a load options object may have.
    const FIELDS: [&str; 5] = ["signal", "cache", "stallTimeoutMs", "vae", "precision"];
}

#[wasm_bindgen]
impl Generator {
    /// Builds the pipeline from a diffusers folder given as
    /// `{ "unet/config.json": Uint8Array, ... }` (see `pipeline::TEXT_FILES`
    /// and `WEIGHT_FILES`). `backend`: "auto" (default: WebGPU, else the
    /// CPU), "webgpu" or "cpu".
    pub async fn create(
        files: js_sys::Object,
        backend: Option<String>,
    ) -> Result<Generator, JsError> {
        let get = |path: &str| -> Result<Option<js_sys::Uint8Array>, JsError> {
            let v = js_sys::Reflect::get(&files, &JsValue::from_str(path))
                .map_err(|_| JsError::new(&format!("{path}: not readable")))?;
            if v.is_undefined() || v.is_null() {
                return Ok(None);
            }
            v.dyn_into::<js_sys::Uint8Array>()
                .map(Some)
                .map_err(|_| JsError::new(&format!("{path} must be a Uint8Array")))
        };
        let config = PipelineConfig::from_lookup("", |p| {
            get(p)
                .map(|b| b.map(|b| b.to_vec()))
                .map_err(|_| crate::Error::Weights(format!("{p} must be a Uint8Array")))
        })
        .map_err(to_js)?;
        let mut sources = Vec::new();
        for path in WEIGHT_FILES {
            let bytes = match get(&fp16_variant(path))? {
                Some(b) => b,
                None => get(path)?.ok_or_else(|| {
                    JsError::new(&format!("{path} is missing from the model folder"))
                })?,
            };
            sources.push(Weights {
                name: path,
                shards: vec![(path.to_string(), fetch::Source::Bytes(bytes, 0))],
                index: None,
            });
        }
        Self::build(config, sources, backend, Precision::Auto).await
    }

    /// Downloads a diffusers folder with `fetch` and builds the pipeline,
    /// streaming each weight file onto the device as it arrives (no file is
    /// ever held whole, in JS or in wasm). `base` is the folder's URL
    /// (absolute, e.g. a CDN's `…/resolve/main/`, or relative to the page);
    /// `onProgress(file, loadedBytes, totalBytes)` is called as bytes arrive
    /// (total is 0 when unknown). `options`: `{ signal, cache, stallTimeoutMs }`:
    /// an `AbortSignal` that cancels the download, the Cache API cache to keep
    /// and reuse files in (default `"ldw-models-v3"`, `false` for none), and
    /// how long a stalled download may wait for its next byte (default 30000).
    #[wasm_bindgen(js_name = fromUrl)]
    pub async fn from_url(
        base: String,
        backend: Option<String>,
        on_progress: Option<js_sys::Function>,
        options: JsValue,
    ) -> Result<Generator, JsError> {
        let folder = Self::open_folder(&base, on_progress, options).await?;
        let result = Self::download(&folder, backend).await;
        if result.is_err() {
            // Never keep files of a failed load: the next attempt fetches them again.
            folder.forget_all().await;
        }
        result
    }

    /// What a model folder needs, read before downloading it: the configs
    /// (checked as a load checks them, so a folder this app cannot run is
    /// named now) and each weight file's header, after which its transfer is
    /// stopped. Resolves to `{ files: [{ path, bytes }], downloadBytes,
    /// weightBytesF32, largestTensor, largestTensorBytes, cpuWeightLimit,
    /// cpuFits, defaultSize, sizeStep, upscaleFactor, guidanceDistilled,
    /// schedulerNote }` (sizes in
    /// bytes, as the headers describe the files). `options` as for `fromUrl`.
    pub async fn inspect(base: String, options: JsValue) -> Result<JsValue, JsError> {
        let folder = Self::open_folder(&base, None, options).await?;
        let result = Self::inspect_folder(&folder).await;
        if result.is_err() {
            folder.forget_all().await;
        }
        result
    }

    async fn inspect_folder(folder: &Folder) -> Result<JsValue, JsError> {
        let config = Self::read_config(folder).await?;
        let mut weights = Self::open_weights(folder).await?;
        let read = Self::read_headers(&mut weights).await;
        for w in &mut weights {
            for (_, s) in &mut w.shards {
                s.abandon();
            }
        }
        let (_, shard_headers) = read?;
        let files: Vec<FileInfo> = (shard_headers.iter().flatten())
            .map(|h| FileInfo {
                path: h.name.clone(),
                bytes: h.file_len(),
            })
            .collect();
        let headers = Self::component_headers(&weights, &shard_headers)?;
        config
            .check([&headers[0], &headers[1], &headers[2]])
            .map_err(to_js)?;
        let refs: Vec<&Header> = headers.iter().collect();
        let (largest, largest_bytes) = largest_tensor(&refs);
        let weights = weight_bytes(&refs);
        let info = ModelInfo {
            download_bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            weight_bytes_f32: weights,
            weight_bytes_f16: weight_bytes_as(&refs, 2),
            largest_tensor: largest,
            largest_tensor_bytes: largest_bytes,
            cpu_weight_limit: CPU_WEIGHT_LIMIT,
            cpu_fits: weights <= CPU_WEIGHT_LIMIT,
            default_size: config.default_size(),
            size_step: config.size_step(),
            upscale_factor: config.upscale_factor(),
            guidance_distilled: config.unet.time_cond_proj_dim.is_some(),
            scheduler_note: config.scheduler.note(),
        };
        to_json(&info)
    }

    /// The folder's fetchers, from `fromUrl`'s options.
    async fn open_folder(
        base: &str,
        on_progress: Option<js_sys::Function>,
        options: JsValue,
    ) -> Result<Folder, JsError> {
        let signal = js_sys::Reflect::get(&options, &JsValue::from_str("signal"))
            .ok()
            .filter(|s| !s.is_undefined() && !s.is_null());
        let o: LoadOptions = if options.is_undefined() || options.is_null() {
            LoadOptions::default()
        } else {
            check_keys(&options, "bad load options", &LoadOptions::FIELDS)?;
            let plain = js_sys::Object::assign(&js_sys::Object::new(), options.unchecked_ref());
            let _ = js_sys::Reflect::delete_property(&plain, &JsValue::from_str("signal"));
            serde_wasm_bindgen::from_value(plain.into())
                .map_err(|e| JsError::new(&format!("bad load options: {e}")))?
        };
        let cache = match &o.cache {
            None => Some(fetch::DEFAULT_CACHE.to_string()),
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Bool(false)) | Some(serde_json::Value::Null) => None,
            Some(v) => {
                return Err(JsError::new(&format!(
                    "bad load options: cache = {v} must be a cache name or false"
                )));
            }
        };
        let stall = o.stall_timeout_ms.unwrap_or(30_000.0);
        if !(stall.is_finite() && stall >= 1.0) {
            return Err(JsError::new(&format!(
                "bad load options: stallTimeoutMs = {stall} must be a positive number of milliseconds"
            )));
        }
        let precision =
            Precision::parse(o.precision.as_deref().unwrap_or("auto")).map_err(|e| {
                let why = match e {
                    crate::Error::InvalidArgument(m) => m,
                    e => e.to_string(),
                };
                JsError::new(&format!("bad load options: {why}"))
            })?;
        let vae = match o.vae.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => Some(
                fetch::Net::new(v, cache.clone(), signal.clone(), stall, on_progress.clone())
                    .await?,
            ),
        };
        let net = fetch::Net::new(base, cache, signal, stall, on_progress).await?;
        Ok(Folder {
            net,
            vae,
            precision,
        })
    }

    async fn download(folder: &Folder, backend: Option<String>) -> Result<Generator, JsError> {
        let config = Self::read_config(folder).await?;
        let sources = Self::open_weights(folder).await?;
        Self::build(config, sources, backend, folder.precision).await
    }

    /// The folder's configs and tokenizer, parsed and checked.
    async fn read_config(folder: &Folder) -> Result<PipelineConfig, JsError> {
        let mut texts = std::collections::HashMap::new();
        // model_index.json first: a folder of another kind is named at once.
        for path in OPTIONAL_FILES {
            let text = folder.net.text(path, true).await?;
            if path == OPTIONAL_FILES[0]
                && let Some(t) = &text
            {
                let kind = check_model_index(&String::from_utf8_lossy(t)).map_err(to_js)?;
                if let PipelineKind::Upscale { .. } = kind {
                    let low_res = folder.net.text(LOW_RES_SCHEDULER_FILE, false).await?;
                    texts.insert(LOW_RES_SCHEDULER_FILE, low_res);
                }
            }
            texts.insert(path, text);
        }
        for path in TEXT_FILES {
            let (net, at) = folder.route(path);
            texts.insert(path, net.text(at, false).await?);
        }
        PipelineConfig::from_lookup(&folder.net.base, |p| Ok(texts.remove(p).flatten()))
            .map_err(to_js)
    }

    /// The weight files, opened in [`WEIGHT_FILES`] order: the fp16 variant
    /// where the folder has one (half the download), else the file, else the
    /// shards of a sharded checkpoint's index (fp16 first).
    async fn open_weights(folder: &Folder) -> Result<Vec<Weights>, JsError> {
        let mut all = Vec::new();
        for path in WEIGHT_FILES {
            let (net, at) = folder.route(path);
            let single = match net.open_any(&fp16_variant(at), true).await? {
                Some(d) => Some(d),
                None => net.open_any(at, true).await?,
            };
            if let Some(d) = single {
                all.push(Weights {
                    name: path,
                    shards: vec![(path.to_string(), fetch::Source::Net(d))],
                    index: None,
                });
                continue;
            }
            let mut found = None;
            for index in [shard_index_path(at, true), shard_index_path(at, false)] {
                if let Some(text) = net.text(&index, true).await? {
                    let index = ShardIndex::parse(&index, &String::from_utf8_lossy(&text))
                        .map_err(to_js)?;
                    let mut shards = Vec::new();
                    for shard in &index.shards {
                        // A shard the index names must be there.
                        shards.push((shard.clone(), fetch::Source::Net(net.open(shard).await?)));
                    }
                    found = Some(Weights {
                        name: path,
                        shards,
                        index: Some(index),
                    });
                    break;
                }
            }
            all.push(found.ok_or_else(|| {
                JsError::new(&format!(
                    "{}{at} is missing from the model folder (nor is there an fp16 variant or a \
                     sharded index): is the folder URL right?",
                    net.base
                ))
            })?);
        }
        Ok(all)
    }

    /// Each file's header (a few hundred kB whatever the model's size), and
    /// the bytes read to get it, per component and shard.
    async fn read_headers(
        weights: &mut [Weights],
    ) -> Result<(Vec<Vec<Vec<u8>>>, Vec<Vec<Header>>), JsError> {
        let mut prefixes = Vec::new();
        let mut headers = Vec::new();
        for w in weights {
            let (mut p, mut h) = (Vec::new(), Vec::new());
            for (name, source) in &mut w.shards {
                let mut prefix = Vec::new();
                let header = loop {
                    if let Some(h) = Header::parse(name, &prefix, source.len()).map_err(to_js)? {
                        break h;
                    }
                    match source.next().await? {
                        Some(chunk) => {
                            prefix.extend_from_slice(&chunk.to_vec());
                            source.keep(chunk).await?;
                        }
                        None => return Err(to_js(Header::incomplete(name, prefix.len() as u64))),
                    }
                };
                p.push(prefix);
                h.push(header);
            }
            prefixes.push(p);
            headers.push(h);
        }
        Ok((prefixes, headers))
    }

    /// One header per component: a sharded checkpoint's shards checked
    /// against its index and merged.
    fn component_headers(
        weights: &[Weights],
        shard_headers: &[Vec<Header>],
    ) -> Result<Vec<Header>, JsError> {
        (weights.iter().zip(shard_headers))
            .map(|(w, h)| match &w.index {
                None => Ok(h[0].clone()),
                Some(index) => {
                    index.check(h).map_err(to_js)?;
                    Header::merge(w.name, h).map_err(to_js)
                }
            })
            .collect()
    }

    /// Reads each weight file's header, chooses the device, checks the
    /// configs against the headers, then streams every tensor onto the device.
    async fn build(
        config: PipelineConfig,
        mut weights: Vec<Weights>,
        backend: Option<String>,
        precision: Precision,
    ) -> Result<Generator, JsError> {
        // Headers first: a few hundred kB each, whatever the model's size.
        let (prefixes, shard_headers) = Self::read_headers(&mut weights).await?;
        let headers = Self::component_headers(&weights, &shard_headers)?;
        // The configs against the headers, key by key, before any data is read.
        config
            .check([&headers[0], &headers[1], &headers[2]])
            .map_err(to_js)?;
        let refs: Vec<&Header> = headers.iter().collect();
        let weights_f32 = weight_bytes(&refs);
        let (device, backend, notice, buffer_limit) = choose_device(
            backend.as_deref().unwrap_or("auto"),
            largest_tensor(&refs),
            &refs,
            precision,
        )
        .await?;
        let dtype = precision.dtype(&device, weights_f32).map_err(to_js)?;
        let mut files = Vec::new();
        let parts = weights.into_iter().zip(prefixes).zip(shard_headers);
        for (i, ((w, prefixes), headers)) in parts.enumerate() {
            let mut shards = Vec::new();
            for (((_, mut source), prefix), header) in
                w.shards.into_iter().zip(prefixes).zip(headers)
            {
                // The header was read above: go on from the bytes after it.
                let start = header.data_start as usize;
                let mut reader = WeightReader::after_header(header, &device, source.len())
                    .keep_on_host(PipelineConfig::on_host(i))
                    .with_dtype(dtype);
                reader.push(&prefix[start..]).map_err(to_js)?;
                drop(prefix);
                loop {
                    lost()?;
                    match source.next().await? {
                        Some(chunk) => {
                            if let Err(e) = reader.push(&chunk.to_vec()) {
                                source.abandon();
                                return Err(to_js(e));
                            }
                            source.keep(chunk).await?;
                        }
                        None => break,
                    }
                }
                shards.push(reader.finish().map_err(to_js)?);
                source.commit().await?;
            }
            files.push(match w.index {
                None => shards.pop().ok_or_else(|| JsError::new("no weight file"))?,
                Some(_) => WeightFile::merge(w.name, shards).map_err(to_js)?,
            });
        }
        let files: [WeightFile; 3] = files
            .try_into()
            .map_err(|_| JsError::new("three weight files"))?;
        let sd = StableDiffusion::load(config, files, &device).map_err(to_js)?;
        sd.set_max_buffer_bytes(buffer_limit);
        Ok(Generator {
            sd: Arc::new(sd),
            run: RefCell::new(None),
            busy: std::cell::Cell::new(false),
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

    /// The dtype the weights are stored in and the networks compute in:
    /// "f32" or "f16" (see the load option `precision`).
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        match self.sd.dtype() {
            burn::tensor::DType::F16 => "f16".into(),
            _ => "f32".into(),
        }
    }

    /// Bytes the loaded weights take (on the GPU, or in wasm memory on the CPU).
    #[wasm_bindgen(getter, js_name = weightBytes)]
    pub fn weight_bytes(&self) -> f64 {
        self.sd.weight_bytes() as f64
    }

    /// The model's default image size in pixels.
    #[wasm_bindgen(getter, js_name = defaultSize)]
    pub fn default_size(&self) -> usize {
        self.sd.default_size
    }

    /// Image sides are multiples of this (pixels per latent); an upscaler's
    /// input may have any side (1).
    #[wasm_bindgen(getter, js_name = sizeStep)]
    pub fn size_step(&self) -> usize {
        self.sd.size_step()
    }

    /// How many times larger than its input the image a run makes is: 1,
    /// or an upscaler's factor (4 for the SD x4 layout). An upscaler's run
    /// needs `image`: RGBA bytes of `width × height` (the input's size).
    #[wasm_bindgen(getter, js_name = upscaleFactor)]
    pub fn upscale_factor(&self) -> usize {
        self.sd.upscale_factor()
    }

    /// What the text encoder will read of `prompt` (see [`Prompts::check`]).
    #[wasm_bindgen(js_name = checkPrompt)]
    pub fn check_prompt(&self, prompt: &str) -> Result<JsValue, JsError> {
        to_json(&PromptReport::from(self.sd.check_prompt(prompt)))
    }

    /// The largest square image side this model can make on this device (its
    /// largest activation within one buffer), with guidance on.
    #[wasm_bindgen(getter, js_name = maxSize)]
    pub fn max_size(&self) -> usize {
        self.sd.max_side(self.sd.classifier_free(2.0))
    }

    /// Set when the folder's scheduler class is run as DDIM (Euler in
    /// SD-Turbo, PNDM in SD 1.x): a sentence for the page to show.
    #[wasm_bindgen(getter, js_name = schedulerNote)]
    pub fn scheduler_note(&self) -> Option<String> {
        self.sd.scheduler_note()
    }

    /// Starts a run. `options`: `{ prompt, negativePrompt, seed, steps, eta,
    /// guidanceScale, timestepSpacing, width, height, strength, noiseLevel }`;
    /// `image` and `mask` (RGBA bytes of `width × height`) select img2img /
    /// inpainting; for an upscaler (see `upscaleFactor`) `image` is the one
    /// to upscale and `noiseLevel` how much noise it gets first.
    pub fn start(
        &self,
        options: JsValue,
        image: Option<Vec<u8>>,
        mask: Option<Vec<u8>>,
    ) -> Result<(), JsError> {
        if self.busy.get() {
            return Err(busy_error());
        }
        self.start_run(options, image, mask)
    }

    fn start_run(
        &self,
        options: JsValue,
        image: Option<Vec<u8>>,
        mask: Option<Vec<u8>>,
    ) -> Result<(), JsError> {
        lost()?;
        let o = Self::options(options)?;
        let sd = &self.sd;
        let run = run_on_cpu_pool(|| sd.start_rgba(&o, image.as_deref(), mask.as_deref()))
            .map_err(to_js)?;
        *self.run.borrow_mut() = Some(run);
        Ok(())
    }

    /// The options object checked: unknown fields, non-whole or out-of-range
    /// numbers are errors naming the option.
    fn options(options: JsValue) -> Result<GenerateOptions, JsError> {
        let input: OptionsInput = if options.is_undefined() || options.is_null() {
            OptionsInput::default()
        } else {
            check_keys(&options, "invalid argument", &OptionsInput::FIELDS)?;
            serde_wasm_bindgen::from_value(options)
                .map_err(|e| JsError::new(&format!("invalid argument: options: {e}")))?
        };
        input.check().map_err(to_js)
    }

    /// Queues one denoising step on the GPU; false when the run is complete.
    pub fn step(&self) -> Result<bool, JsError> {
        lost()?;
        let mut run = self.run.borrow_mut();
        let run = run
            .as_mut()
            .ok_or_else(|| JsError::new("no run: call start first"))?;
        run_on_cpu_pool(|| run.step()).map_err(to_js)
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

    /// Keeps what each step of the current run does, for `stepDetails()`
    /// (call after `start`).
    pub fn trace(&self, on: bool) -> Result<(), JsError> {
        self.run
            .borrow_mut()
            .as_mut()
            .ok_or_else(|| JsError::new("no run: call start first"))?
            .trace(on);
        Ok(())
    }

    /// The last step laid open (the run must be traced): resolves to `{
    /// index, timestep, alphaProdT, alphaProdPrev, ddim?: { sqrtAlphaPrev,
    /// direction, sigma }, shape: [C, h, w], sample, predOriginal,
    /// predNoise, prevSample, latentMask? }`, the tensors as Float32Arrays
    /// of latents (x_t, x̂₀, ε̂, x_{t−1}; the inpainting mask as `[h, w]`).
    /// DDIM's update is `x_{t−1} = sqrtAlphaPrev·x̂₀ + direction·ε̂ + sigma·z`.
    #[wasm_bindgen(js_name = stepDetails)]
    pub fn step_details(&self) -> Result<js_sys::Promise, JsError> {
        lost()?;
        let run = self.run.borrow();
        let run = run
            .as_ref()
            .ok_or_else(|| JsError::new("no run: call start first"))?;
        let t = run.last_step().cloned().ok_or_else(|| {
            JsError::new("no step traced: call trace(true) after start, then step")
        })?;
        let mask = run.latent_mask();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let [_, c, h, w] = t.sample.dims();
            let o = js_sys::Object::new();
            let set = |k: &str, v: JsValue| js_sys::Reflect::set(&o, &JsValue::from_str(k), &v);
            set("index", (t.index as u32).into())?;
            set("timestep", (t.timestep as u32).into())?;
            set("alphaProdT", t.alpha_prod_t.into())?;
            set("alphaProdPrev", t.alpha_prod_prev.into())?;
            if let Some(d) = t.ddim {
                let ddim = js_sys::Object::new();
                for (k, v) in [
                    ("sqrtAlphaPrev", d.sqrt_alpha_prev),
                    ("direction", d.direction),
                    ("sigma", d.std_dev),
                ] {
                    js_sys::Reflect::set(&ddim, &JsValue::from_str(k), &v.into())?;
                }
                set("ddim", ddim.into())?;
            }
            let shape =
                js_sys::Array::of3(&(c as u32).into(), &(h as u32).into(), &(w as u32).into());
            set("shape", shape.into())?;
            for (k, v) in [
                ("sample", t.sample),
                ("predOriginal", t.pred_original),
                ("predNoise", t.pred_noise),
                ("prevSample", t.prev_sample),
            ] {
                set(k, read_values(v).await?.into())?;
            }
            if let Some(m) = mask {
                set("latentMask", read_values(m).await?.into())?;
            }
            Ok(o.into())
        }))
    }

    /// Latents (`values`: `channels × height × width`, as `stepDetails`
    /// gives them) decoded by the VAE: resolves to RGBA bytes of the image.
    #[wasm_bindgen(js_name = decodeLatents)]
    pub fn decode_latents(
        &self,
        values: Vec<f32>,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<js_sys::Promise, JsError> {
        lost()?;
        let sd = &*self.sd;
        let image = run_on_cpu_pool(|| sd.decode_values(&values, [channels, height, width]))
            .map_err(to_js)?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let [_, _, h, w] = image.dims();
            let values = read_vec(image).await?;
            let rgba = tensor_values_to_rgba(&values, w, h).map_err(to_js)?;
            Ok(js_sys::Uint8Array::from(rgba.as_slice()).into())
        }))
    }

    /// An RGBA image's latents (the VAE encoder's mean, scaled as the UNet
    /// sees them): resolves to a Float32Array of `C × (height/f) × (width/f)`
    /// (f = `sizeStep`).
    #[wasm_bindgen(js_name = encodeImage)]
    pub fn encode_image(
        &self,
        rgba: Vec<u8>,
        width: usize,
        height: usize,
    ) -> Result<js_sys::Promise, JsError> {
        lost()?;
        let sd = &*self.sd;
        let z = run_on_cpu_pool(|| sd.encode_rgba(&rgba, width, height)).map_err(to_js)?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            Ok(read_values(z).await?.into())
        }))
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
        let _busy = Busy::take(&self.busy)?;
        self.start_run(options, image, mask)?;
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

    /// The final image if the run is complete, else the current preview,
    /// with the run's stage sums and step count for the non-finite check.
    fn image(&self) -> Result<Checked, JsError> {
        lost()?;
        let run = self.run.borrow();
        let run = run
            .as_ref()
            .ok_or_else(|| JsError::new("no run: call start first"))?;
        let image = run_on_cpu_pool(|| {
            if run.steps_done() == run.total_steps() {
                run.finish()
            } else {
                run.decode()
            }
        });
        Ok(Checked {
            image,
            probes: run.probes(),
            total_steps: run.total_steps(),
        })
    }
}

/// An image still on the device, with what shows whether its run stayed finite.
struct Checked {
    image: Tensor<4>,
    probes: Tensor<1>,
    total_steps: usize,
}

/// Reads an image back from the device as RGBA bytes, after checking the
/// run's stage sums: NaN or infinity is an error naming the stage.
async fn to_rgba(c: Checked) -> Result<Vec<u8>, JsError> {
    let sums = read_vec(c.probes).await?;
    Sampling::check_probe_sums(&sums, c.total_steps).map_err(to_js)?;
    let [_, _, h, w] = c.image.dims();
    let values = read_vec(c.image).await?;
    tensor_values_to_rgba(&values, w, h).map_err(to_js)
}

/// A tensor's values read back from the device.
async fn read_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, JsError> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| JsError::new(&format!("reading from the GPU failed: {e:?}")))?;
    data.try_to_vec::<f32>()
        .map_err(|e| JsError::new(&format!("{e:?}")))
}

/// A tensor read back from the device as a Float32Array.
async fn read_values<const D: usize>(t: Tensor<D>) -> Result<js_sys::Float32Array, JsValue> {
    Ok(js_sys::Float32Array::from(read_vec(t).await?.as_slice()))
}

/// A JS object's own keys that are not among `allowed`, as an error naming
/// the first (serde_wasm_bindgen reads only the fields it knows, so a
/// misspelt one would otherwise be ignored without a word).
fn check_keys(value: &JsValue, what: &str, allowed: &[&str]) -> Result<(), JsError> {
    if !value.is_object() {
        return Ok(());
    }
    let keys = js_sys::Object::keys(value.unchecked_ref::<js_sys::Object>());
    match keys
        .iter()
        .filter_map(|k| k.as_string())
        .find(|k| !allowed.contains(&k.as_str()))
    {
        Some(k) => Err(JsError::new(&format!(
            "{what}: unknown option `{k}`; the options are {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// One component's weights: a file, or a sharded checkpoint's shards and index.
struct Weights {
    /// The component's file in [`WEIGHT_FILES`].
    name: &'static str,
    /// `(path, source)` per file, in the index's order.
    shards: Vec<(String, fetch::Source)>,
    index: Option<ShardIndex>,
}

/// A model folder and, when the VAE is swapped in from elsewhere (TAESD as a
/// fast decoder), the VAE's folder: every file is fetched through [`Folder::route`].
struct Folder {
    net: fetch::Net,
    vae: Option<fetch::Net>,
    /// The load option `precision`.
    precision: Precision,
}

impl Folder {
    /// Which folder holds a pipeline file, and its path there.
    fn route<'a>(&'a self, path: &'a str) -> (&'a fetch::Net, &'a str) {
        match (&self.vae, swapped_vae_path(path)) {
            (Some(v), Some(rest)) => (v, rest),
            _ => (&self.net, path),
        }
    }

    /// Deletes every file this load opened (shards and indexes included)
    /// from the cache.
    async fn forget_all(&self) {
        self.net.forget_all().await;
        if let Some(v) = &self.vae {
            v.forget_all().await;
        }
    }
}

/// What `Generator.inspect` reports about a model folder.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    files: Vec<FileInfo>,
    download_bytes: u64,
    weight_bytes_f32: u64,
    weight_bytes_f16: u64,
    largest_tensor: String,
    largest_tensor_bytes: u64,
    cpu_weight_limit: u64,
    cpu_fits: bool,
    default_size: usize,
    size_step: usize,
    upscale_factor: usize,
    guidance_distilled: bool,
    scheduler_note: Option<String>,
}

/// A [`PromptCheck`] for JS: `{ text, tokens, maxTokens, truncated,
/// unknownWords, readAs, hasKnownWord, notes }` (`readAs`: `[word, the
/// trained word it is read as]` pairs).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PromptReport {
    truncated: bool,
    notes: Vec<String>,
    text: String,
    tokens: usize,
    max_tokens: usize,
    unknown_words: Vec<String>,
    read_as: Vec<(String, String)>,
    has_known_word: bool,
}

impl From<PromptCheck> for PromptReport {
    fn from(c: PromptCheck) -> Self {
        Self {
            truncated: c.truncated(),
            notes: c.notes(),
            text: c.text,
            tokens: c.tokens,
            max_tokens: c.max_tokens,
            unknown_words: c.unknown_words,
            read_as: c.read_as,
            has_known_word: c.has_known_word,
        }
    }
}

/// A plain JS object (maps as objects) from a serializable value.
fn to_json<T: serde::Serialize>(value: &T) -> Result<JsValue, JsError> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| JsError::new(&e.to_string()))
}

/// A model's prompt reading without its weights: its tokenizer and
/// `prompts.json` (example prompts, names to suggest, emoji read as names).
/// For a page to say what a prompt will do before the model is downloaded.
#[wasm_bindgen]
pub struct Prompts {
    tokenizer: ClipTokenizer,
    vocabulary: Option<PromptVocabulary>,
}

#[wasm_bindgen]
impl Prompts {
    /// Reads the folder's configs and tokenizer (as `Generator.inspect`,
    /// whose `options` it takes), not its weights.
    #[wasm_bindgen(js_name = fromUrl)]
    pub async fn from_url(base: String, options: JsValue) -> Result<Prompts, JsError> {
        let folder = Generator::open_folder(&base, None, options).await?;
        let config = Generator::read_config(&folder).await?;
        Ok(Self {
            tokenizer: config.tokenizer,
            vocabulary: config.prompts,
        })
    }

    /// What the text encoder will read of `prompt`: `{ text, tokens,
    /// maxTokens, truncated, unknownWords, readAs, hasKnownWord, notes }`. `text`
    /// has emoji replaced by names; `notes` are sentences for the user.
    pub fn check(&self, prompt: &str) -> Result<JsValue, JsError> {
        let c = PromptVocabulary::check(self.vocabulary.as_ref(), &self.tokenizer, prompt);
        to_json(&PromptReport::from(c))
    }

    /// Example prompts from `prompts.json` (none without it).
    #[wasm_bindgen(getter)]
    pub fn examples(&self) -> Vec<String> {
        self.vocabulary
            .as_ref()
            .map_or_else(Vec::new, |v| v.examples.clone())
    }

    /// What the model was trained to draw, for autocomplete (none without
    /// `prompts.json`).
    #[wasm_bindgen(getter)]
    pub fn suggestions(&self) -> Vec<String> {
        self.vocabulary
            .as_ref()
            .map_or_else(Vec::new, |v| v.names.clone())
    }
}

#[derive(serde::Serialize)]
struct FileInfo {
    path: String,
    bytes: u64,
}

/// Downloads from a window or a worker: streamed, with byte progress, a
/// stall timeout, an `AbortSignal`, and the Cache API (a file read from the
/// network is written to the cache as it streams, and only kept if it loads).
mod fetch {
    use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
    use wasm_bindgen::prelude::*;
    use wasm_bindgen_futures::JsFuture;

    use crate::pipeline::MAX_TEXT_FILE_BYTES;

    /// The cache weights are kept in unless the caller names another. Files
    /// in it are used without asking the server again, so the name changes
    /// when a shipped model changes (v2: the guidance-conditioned emoji
    /// model; v3: its text encoder reads unseen words as their nearest
    /// trained word); the service worker deletes the older caches.
    pub const DEFAULT_CACHE: &str = "ldw-models-v3";

    fn global(name: &str) -> Result<JsValue, JsError> {
        Reflect::get(&js_sys::global(), &JsValue::from_str(name))
            .ok()
            .filter(|v| !v.is_undefined())
            .ok_or_else(|| JsError::new(&format!("no global {name}")))
    }

    fn message(e: &JsValue) -> String {
        Reflect::get(e, &JsValue::from_str("message"))
            .ok()
            .and_then(|m| m.as_string())
            .unwrap_or_else(|| format!("{e:?}"))
    }

    /// `obj.method(...args)`.
    fn call(obj: &JsValue, method: &str, args: &[&JsValue]) -> Result<JsValue, JsValue> {
        let f: Function = Reflect::get(obj, &JsValue::from_str(method))?.dyn_into()?;
        f.apply(obj, &args.iter().copied().collect::<Array>())
    }

    /// `new Class(...args)` for a global class.
    fn construct(class: &str, args: &[&JsValue]) -> Result<JsValue, JsValue> {
        let c: Function = global(class).map_err(JsValue::from)?.dyn_into()?;
        Reflect::construct(&c, &args.iter().copied().collect::<Array>())
    }

    async fn wait(p: JsValue) -> Result<JsValue, JsValue> {
        JsFuture::from(p.unchecked_into::<Promise>()).await
    }

    fn get(obj: &JsValue, key: &str) -> JsValue {
        Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
    }

    /// A promise resolving to `value` after `ms` milliseconds.
    fn after(ms: f64, value: &JsValue) -> Promise {
        let value = value.clone();
        Promise::new(&mut |resolve, _| {
            let value = value.clone();
            let done = Closure::once_into_js(move || {
                let _ = resolve.call1(&JsValue::NULL, &value);
            });
            if let Ok(f) = global("setTimeout").map(Function::from) {
                let _ = f.call2(&JsValue::NULL, &done, &JsValue::from(ms));
            }
        })
    }

    /// Where a model folder is fetched from and how.
    pub struct Net {
        pub base: String,
        cache: Option<JsValue>,
        signal: Option<JsValue>,
        stall_ms: f64,
        on_progress: Option<Function>,
        /// Every path opened, so that a failed load can forget exactly those.
        opened: std::cell::RefCell<Vec<String>>,
    }

    impl Net {
        /// `base` is resolved against the page and given a trailing slash (a
        /// folder URL typed without one must not lose its last segment).
        pub async fn new(
            base: &str,
            cache: Option<String>,
            signal: Option<JsValue>,
            stall_ms: f64,
            on_progress: Option<Function>,
        ) -> Result<Self, JsError> {
            let here = get(&global("location")?, "href")
                .as_string()
                .unwrap_or_default();
            let url = web_sys::Url::new_with_base(base, &here)
                .map_err(|e| JsError::new(&format!("bad model URL {base:?}: {}", message(&e))))?;
            let mut base = url.href();
            if let Some(q) = base.find(['?', '#']) {
                base.truncate(q);
            }
            if !base.ends_with('/') {
                base.push('/');
            }
            // Opened once for the whole folder. The Cache API exists only in
            // secure contexts (https, localhost); without it nothing is cached.
            let cache = match (cache, global("caches")) {
                (Some(name), Ok(caches)) => match call(&caches, "open", &[&name.into()]) {
                    Ok(p) => wait(p).await.ok(),
                    Err(_) => None,
                },
                _ => None,
            };
            Ok(Self {
                base,
                cache,
                signal,
                stall_ms,
                on_progress,
                opened: Default::default(),
            })
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        fn check_aborted(&self) -> Result<(), JsError> {
            match &self.signal {
                Some(s) if get(s, "aborted").is_truthy() => Err(JsError::new("download cancelled")),
                _ => Ok(()),
            }
        }

        /// Opens `path`: from the cache if it is there, else from the network.
        /// `None` for an optional file the server does not have (404).
        pub async fn open_any(
            &self,
            path: &str,
            optional: bool,
        ) -> Result<Option<Download>, JsError> {
            self.check_aborted()?;
            self.opened.borrow_mut().push(path.to_string());
            let url = self.url(path);
            let cache = self.cache.clone();
            if let Some(c) = &cache
                && let Ok(p) = call(c, "match", &[&JsValue::from_str(&url)])
                && let Ok(hit) = wait(p).await
                && !hit.is_undefined()
            {
                // A remembered 404 of an optional file (see below).
                if get(&hit, "status").as_f64() == Some(404.0) {
                    return Ok(None);
                }
                return Ok(Some(Download::new(self, path, url, hit, None)?));
            }
            let init = Object::new();
            if let Some(s) = &self.signal {
                let _ = Reflect::set(&init, &JsValue::from_str("signal"), s);
            }
            let fetch = global("fetch")?;
            let res = wait(
                fetch
                    .unchecked_ref::<Function>()
                    .call2(&JsValue::NULL, &JsValue::from_str(&url), &init)
                    .map_err(|e| {
                        JsError::new(&format!("could not reach {url}: {}", message(&e)))
                    })?,
            )
            .await
            .map_err(|e| match self.check_aborted() {
                Err(cancelled) => cancelled,
                Ok(()) => JsError::new(&format!(
                    "could not reach {url}: {} (the server may be down or this device offline; \
                     a server on another site must send Access-Control-Allow-Origin)",
                    message(&e)
                )),
            })?;
            let status = get(&res, "status").as_f64().unwrap_or(0.0) as u32;
            if !get(&res, "ok").is_truthy() {
                if optional && status == 404 {
                    // Remember that the folder has no such file, so that the
                    // model loads offline too.
                    if let Some(c) = &cache
                        && let Ok(marker) = construct(
                            "Response",
                            &[&JsValue::NULL, &{
                                let init = Object::new();
                                let _ = Reflect::set(&init, &"status".into(), &404.into());
                                init.into()
                            }],
                        )
                        && let Ok(p) = call(c, "put", &[&JsValue::from_str(&url), &marker])
                    {
                        let _ = wait(p).await;
                    }
                    return Ok(None);
                }
                let text = get(&res, "statusText").as_string().unwrap_or_default();
                let hint = if status == 404 {
                    ": the model folder has no such file (is the folder URL right?)"
                } else {
                    ""
                };
                return Err(JsError::new(&format!("{url}: HTTP {status} {text}{hint}")));
            }
            Ok(Some(Download::new(self, path, url, res, cache)?))
        }

        /// A whole text file (configs, tokenizer), at most `MAX_TEXT_FILE_BYTES`.
        pub async fn text(&self, path: &str, optional: bool) -> Result<Option<Vec<u8>>, JsError> {
            let Some(mut d) = self.open_any(path, optional).await? else {
                return Ok(None);
            };
            let mut out = Vec::new();
            while let Some(chunk) = d.next().await? {
                if out.len() as u64 + chunk.length() as u64 > MAX_TEXT_FILE_BYTES {
                    d.abandon();
                    return Err(JsError::new(&format!(
                        "{} is larger than {} MB, too large for a config or tokenizer file: is \
                         the model folder URL right?",
                        d.url,
                        MAX_TEXT_FILE_BYTES >> 20
                    )));
                }
                out.extend_from_slice(&chunk.to_vec());
                d.keep(chunk).await?;
            }
            d.commit().await?;
            Ok(Some(out))
        }

        /// A weight file, to be streamed.
        pub async fn open(&self, path: &str) -> Result<Download, JsError> {
            self.open_any(path, false).await?.ok_or_else(|| {
                JsError::new(&format!(
                    "{} is missing from the model folder",
                    self.url(path)
                ))
            })
        }

        /// Deletes every file opened through this fetcher from the cache
        /// (remembered 404s included).
        pub async fn forget_all(&self) {
            let Some(c) = &self.cache else { return };
            let opened = std::mem::take(&mut *self.opened.borrow_mut());
            for path in opened {
                if let Ok(p) = call(c, "delete", &[&JsValue::from_str(&self.url(&path))]) {
                    let _ = wait(p).await;
                }
            }
        }
    }

    /// One response body being read, and the cache entry being written from it.
    pub struct Download {
        path: String,
        pub url: String,
        reader: JsValue,
        total: Option<u64>,
        loaded: u64,
        stall_ms: f64,
        signal_aborted: Option<JsValue>,
        on_progress: Option<Function>,
        /// The writer feeding `cache.put` and the put's promise.
        cache_writer: Option<(JsValue, JsValue)>,
    }

    impl Download {
        fn new(
            net: &Net,
            path: &str,
            url: String,
            res: JsValue,
            cache: Option<JsValue>,
        ) -> Result<Self, JsError> {
            let headers = get(&res, "headers");
            let header = |k: &str| {
                call(&headers, "get", &[&JsValue::from_str(k)])
                    .ok()
                    .and_then(|v| v.as_string())
            };
            // A compressed body's length is not the file's.
            let encoded = header("content-encoding").is_some_and(|e| e != "identity");
            let total = header("content-length")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|_| !encoded);
            let body = get(&res, "body");
            if body.is_null() || body.is_undefined() {
                return Err(JsError::new(&format!("{url}: empty response")));
            }
            let cache_writer = match cache {
                Some(c) => (|| -> Result<(JsValue, JsValue), JsValue> {
                    let ts = construct("TransformStream", &[])?;
                    let init = Object::new();
                    let h = Object::new();
                    if let Some(t) = total {
                        Reflect::set(&h, &"content-length".into(), &t.to_string().into())?;
                    }
                    Reflect::set(&init, &"headers".into(), &h)?;
                    let copy = construct("Response", &[&get(&ts, "readable"), &init])?;
                    let put = call(&c, "put", &[&JsValue::from_str(&url), &copy])?;
                    // A failed put is reported by commit; never unhandled.
                    let _ = call(&put, "catch", &[&Closure::once_into_js(|_: JsValue| {})]);
                    let writer = call(&get(&ts, "writable"), "getWriter", &[])?;
                    Ok((writer, put))
                })()
                .ok(),
                None => None,
            };
            Ok(Self {
                path: path.to_string(),
                reader: call(&body, "getReader", &[])
                    .map_err(|e| JsError::new(&format!("{url}: {}", message(&e))))?,
                url,
                total,
                loaded: 0,
                stall_ms: net.stall_ms,
                signal_aborted: net.signal.clone(),
                on_progress: net.on_progress.clone(),
                cache_writer,
            })
        }

        /// The next chunk, `None` at the end; an error when the body stalls
        /// for the stall timeout, is cut off, or the signal aborts.
        pub async fn next(&mut self) -> Result<Option<Uint8Array>, JsError> {
            let stalled = JsValue::from_str("stalled");
            let read = call(&self.reader, "read", &[])
                .map_err(|e| JsError::new(&format!("{}: {}", self.url, message(&e))))?;
            let race = Promise::race(
                &[read, after(self.stall_ms, &stalled).into()]
                    .into_iter()
                    .collect::<Array>(),
            );
            let chunk = match JsFuture::from(race).await {
                Ok(v) if v == stalled => {
                    self.abandon();
                    return Err(JsError::new(&format!(
                        "{}: no data arrived for {:.0} s after {} bytes; the server stalled. \
                         Try again later.",
                        self.url,
                        self.stall_ms / 1000.0,
                        self.loaded
                    )));
                }
                Ok(v) => v,
                Err(e) => {
                    self.abandon();
                    if self
                        .signal_aborted
                        .as_ref()
                        .is_some_and(|s| get(s, "aborted").is_truthy())
                    {
                        return Err(JsError::new("download cancelled"));
                    }
                    return Err(JsError::new(&format!(
                        "{}: download failed after {} bytes: {}",
                        self.url,
                        self.loaded,
                        message(&e)
                    )));
                }
            };
            if get(&chunk, "done").is_truthy() {
                if let Some(t) = self.total
                    && t != self.loaded
                {
                    self.abandon();
                    return Err(JsError::new(&format!(
                        "{}: download stopped at {} of {t} bytes",
                        self.url, self.loaded
                    )));
                }
                return Ok(None);
            }
            let value: Uint8Array = get(&chunk, "value")
                .dyn_into()
                .map_err(|_| JsError::new(&format!("{}: unreadable chunk", self.url)))?;
            self.loaded += value.length() as u64;
            if let Some(f) = &self.on_progress {
                // A throwing progress callback must not stop the download.
                let _ = f.call3(
                    &JsValue::NULL,
                    &JsValue::from_str(&self.path),
                    &JsValue::from(self.loaded as f64),
                    &JsValue::from(self.total.unwrap_or(0) as f64),
                );
            }
            Ok(Some(value))
        }

        /// The file's length, when the server said it.
        pub fn len(&self) -> Option<u64> {
            self.total
        }

        /// Passes a chunk that was used on to the cache entry being written.
        pub async fn keep(&mut self, chunk: Uint8Array) -> Result<(), JsError> {
            if let Some((w, _)) = &self.cache_writer
                && let Ok(p) = call(w, "write", &[&chunk])
                && wait(p).await.is_err()
            {
                // The cache refused (quota): go on without caching this file.
                self.cache_writer = None;
            }
            Ok(())
        }

        /// The whole file was used: finish its cache entry.
        pub async fn commit(mut self) -> Result<(), JsError> {
            if let Some((w, put)) = self.cache_writer.take()
                && let Ok(p) = call(&w, "close", &[])
            {
                let _ = wait(p).await;
                let _ = wait(put).await;
            }
            Ok(())
        }

        /// Stops reading and drops the half-written cache entry (an aborted
        /// `cache.put` stores nothing). Also what dropping a download does.
        pub fn abandon(&mut self) {
            let ignore = Closure::once_into_js(|_: JsValue| {});
            if let Some((w, _)) = self.cache_writer.take()
                && let Ok(p) = call(&w, "abort", &[])
            {
                let _ = call(&p, "catch", &[&ignore]);
            }
            if let Ok(p) = call(&self.reader, "cancel", &[]) {
                let _ = call(&p, "catch", &[&ignore]);
            }
        }
    }

    /// A download dropped before its end (an error elsewhere) stops reading
    /// and leaves no cache entry behind.
    impl Drop for Download {
        fn drop(&mut self) {
            self.abandon();
        }
    }

    /// A weight file: bytes handed over from JS, or a download.
    pub enum Source {
        Bytes(Uint8Array, u32),
        Net(Download),
    }

    impl Source {
        /// Bytes from JS are copied into wasm in pieces of this size.
        const PIECE: u32 = 8 << 20;

        pub fn len(&self) -> Option<u64> {
            match self {
                Self::Bytes(b, _) => Some(b.length() as u64),
                Self::Net(d) => d.len(),
            }
        }

        pub async fn next(&mut self) -> Result<Option<Uint8Array>, JsError> {
            match self {
                Self::Bytes(b, at) => {
                    if *at >= b.length() {
                        return Ok(None);
                    }
                    let end = at.saturating_add(Self::PIECE).min(b.length());
                    let piece = b.subarray(*at, end);
                    *at = end;
                    Ok(Some(piece))
                }
                Self::Net(d) => d.next().await,
            }
        }

        pub async fn keep(&mut self, chunk: Uint8Array) -> Result<(), JsError> {
            match self {
                Self::Bytes(..) => Ok(()),
                Self::Net(d) => d.keep(chunk).await,
            }
        }

        pub async fn commit(self) -> Result<(), JsError> {
            match self {
                Self::Bytes(..) => Ok(()),
                Self::Net(d) => d.commit().await,
            }
        }

        pub fn abandon(&mut self) {
            if let Self::Net(d) = self {
                d.abandon();
            }
        }
    }

    /// Resolves on the next turn of the event loop (setTimeout 0), so that
    /// messages and UI events (a cancel) get in between steps.
    pub async fn next_tick() {
        let _ = JsFuture::from(after(0.0, &JsValue::UNDEFINED)).await;
    }
}

/// Marks a Generator busy for as long as it lives (a whole `generate()`,
/// whichever way it ends).
struct Busy<'a>(&'a std::cell::Cell<bool>);

impl<'a> Busy<'a> {
    fn take(flag: &'a std::cell::Cell<bool>) -> Result<Self, JsError> {
        if flag.replace(true) {
            return Err(busy_error());
        }
        Ok(Self(flag))
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

fn busy_error() -> JsError {
    JsError::new(
        "a generation is already running on this Generator: wait for it, or call cancel() first",
    )
}

fn to_js(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}
