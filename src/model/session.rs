//! [`Detector`]: one ONNX Runtime session for one model package, with its contract.
//!
//! `Session::run` takes `&mut self`, so a detector is owned by exactly one worker; workers that
//! run in parallel each open their own. Inputs are CHW float batches prepared by
//! [`crate::preprocess`]; outputs are one [`RawOutput`] per image. A fixed-batch graph is fed
//! in chunks of its batch size, the last chunk zero-padded and the padding rows discarded.

use serde::{Deserialize, Serialize};

use super::contract::{
    BatchSize, ContractError, ContractKind, ElementType, GraphIo, ModelContract, TensorSpec, detect,
};
use super::package::ModelPackage;
use super::runtime::OrtRuntime;
use crate::postprocess::AnomalyMap;
use crate::preprocess::{ChannelOrder, InputSpec, Normalisation, ResizeMode};

/// An ONNX Runtime execution provider linesight can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    #[serde(rename = "tensorrt")]
    #[value(name = "tensorrt")]
    TensorRt,
}

impl ExecutionProvider {
    /// The name ONNX Runtime lists in `GetAvailableProviders`.
    pub fn ort_name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPUExecutionProvider",
            ExecutionProvider::Cuda => "CUDAExecutionProvider",
            ExecutionProvider::TensorRt => "TensorrtExecutionProvider",
        }
    }
}

/// How to build a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionOptions {
    /// Threads ONNX Runtime uses inside one operator (0 = ONNX Runtime's default: one per core).
    pub intra_threads: usize,
    /// Providers in order of preference; CPU is always the last resort.
    pub execution_providers: Vec<ExecutionProvider>,
    /// CUDA/TensorRT device ordinal.
    pub device_id: i32,
    /// Whether ONNX Runtime's intra-op threads spin between runs waiting for work (its
    /// default). Spinning shaves latency off back-to-back runs (about 10 % per frame for the
    /// demo and PaDiM models on the 2-core build machine); not spinning leaves the cores between
    /// runs to other work on them (camera decoding, the API, the store). On that machine the
    /// live pipeline was a few percent faster with spinning (BENCHMARKS.md); measure both on
    /// the target hardware with `cargo bench --bench pipeline`.
    pub intra_op_spinning: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            intra_threads: 0,
            execution_providers: vec![ExecutionProvider::Cpu],
            device_id: 0,
            intra_op_spinning: true,
        }
    }
}

/// Errors of the model stage.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("ONNX Runtime could not load {path}: {source}")]
    Load {
        path: std::path::PathBuf,
        #[source]
        source: ort::Error,
    },
    #[error("{path}: {source}")]
    Contract {
        path: std::path::PathBuf,
        #[source]
        source: ContractError,
    },
    #[error(
        "execution provider {provider} is not available in the loaded ONNX Runtime ({available}); install the GPU build with `scripts/install-onnxruntime --gpu` and build linesight with `--features gpu`"
    )]
    ProviderUnavailable {
        provider: &'static str,
        available: String,
    },
    #[error("execution provider {provider} failed to register: {source}")]
    ProviderRegistration {
        provider: &'static str,
        #[source]
        source: ort::Error,
    },
    #[error(
        "no threshold for {model}: the graph does not carry one; set decision.threshold in model.toml or pass --threshold"
    )]
    NoThreshold { model: String },
    #[error(
        "model package {dir} changed while it was loaded (SHA-256 {was} when opened, {now} now); \
         load it again once it is complete"
    )]
    Changed {
        dir: std::path::PathBuf,
        was: String,
        now: String,
    },
    #[error("model package {dir} cannot be read again after loading: {message}")]
    Reread {
        dir: std::path::PathBuf,
        message: String,
    },
    #[error(
        "{what} {value} for {model}: an anomalib model scores in [0, 1], so the threshold must \
         be at least 0 and below 1 (else every part passes, or every part is rejected)"
    )]
    Threshold {
        model: String,
        what: &'static str,
        value: f32,
    },
    #[error("inference failed: {0}")]
    Run(#[source] ort::Error),
    #[error("output {name}: {message}")]
    Output { name: String, message: String },
    #[error(
        "batch holds {got} floats, expected a multiple of {per_image} (3 x {height} x {width})"
    )]
    BatchSize {
        got: usize,
        per_image: usize,
        width: u32,
        height: u32,
    },
}

/// What the model said about one image, before any decision.
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutput {
    pub score: f32,
    pub map: Option<AnomalyMap>,
}

/// Thresholds in force for a detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Image threshold: defect when score > threshold.
    pub image: f32,
    /// Pixel threshold for defect regions.
    pub pixel: f32,
    /// Smallest region reported, in original-image pixels.
    pub min_region_area_px: u64,
}

/// A model ready to run: session, contract, preprocessing spec and thresholds.
#[derive(Debug)]
pub struct Detector {
    session: ort::session::Session,
    pub package: ModelPackage,
    pub contract: ModelContract,
    pub io: GraphIo,
    pub input: InputSpec,
    /// `None` when neither the command line, the manifest nor the graph gives a threshold (a
    /// bare anomaly-map or score graph): such a detector can be described but not decide.
    pub thresholds: Option<Thresholds>,
    /// The providers the session was built with, in order.
    pub providers: Vec<ExecutionProvider>,
}

fn tensor_spec(outlet: &ort::value::Outlet) -> TensorSpec {
    let dtype = outlet.dtype();
    let element = match dtype.tensor_type() {
        Some(ort::value::TensorElementType::Float32) => ElementType::F32,
        Some(ort::value::TensorElementType::Bool) => ElementType::Bool,
        Some(other) => ElementType::Other(format!("{other:?}").to_lowercase()),
        None => ElementType::Other(format!("{dtype:?}")),
    };
    let shape = dtype
        .tensor_shape()
        .map(|s| s.iter().map(|&d| (d >= 0).then_some(d)).collect())
        .unwrap_or_default();
    TensorSpec {
        name: outlet.name().to_string(),
        element,
        shape,
    }
}

impl Detector {
    /// Builds a session for `package` and resolves its contract, preprocessing and thresholds.
    /// The thresholds resolve in this order: `threshold_override`, `model.toml`, the graph.
    /// `threshold_override` (the `--threshold` flag) wins over the manifest and the graph.
    pub fn new(
        runtime: &OrtRuntime,
        package: ModelPackage,
        options: &SessionOptions,
        threshold_override: Option<f32>,
    ) -> Result<Detector, ModelError> {
        let path = package.onnx_path.clone();
        let (session, providers) = open_session(runtime, &path, options)?;
        // The files were hashed when the package was opened, and ONNX Runtime has just read
        // them again from disk: a package replaced in between would run under the old identity.
        let reread = ModelPackage::open(&package.dir).map_err(|e| ModelError::Reread {
            dir: package.dir.clone(),
            message: e.to_string(),
        })?;
        if reread.sha256 != package.sha256 {
            return Err(ModelError::Changed {
                dir: package.dir.clone(),
                was: package.sha256.clone(),
                now: reread.sha256,
            });
        }

        let io = GraphIo {
            inputs: session.inputs().iter().map(tensor_spec).collect(),
            outputs: session.outputs().iter().map(tensor_spec).collect(),
        };
        let contract =
            detect(&io, package.manifest.as_ref()).map_err(|source| ModelError::Contract {
                path: path.clone(),
                source,
            })?;
        let manifest = package.manifest.clone().unwrap_or_default();
        let input = InputSpec {
            width: contract.width,
            height: contract.height,
            resize: manifest.input.resize.unwrap_or(ResizeMode::PillowBilinear),
            channel_order: manifest.input.channel_order.unwrap_or(ChannelOrder::Rgb),
            normalisation: manifest
                .input
                .normalisation
                .as_ref()
                .map_or(Normalisation::None, |n| n.to_normalisation()),
            roi: manifest.input.roi,
        };
        let thresholds = threshold_override
            .or(manifest.decision.threshold)
            .or(contract.graph_threshold)
            .map(|image| {
                // anomalib normalises map and score alike (threshold 0.5 for both), so overriding
                // the image threshold leaves the pixel threshold at the graph's unless the
                // manifest pins it.
                let pixel = manifest.decision.pixel_threshold.unwrap_or(
                    if contract.kind == ContractKind::Anomalib && threshold_override.is_some() {
                        contract.graph_threshold.unwrap_or(image)
                    } else {
                        image
                    },
                );
                Thresholds {
                    image,
                    pixel,
                    min_region_area_px: manifest.decision.min_region_area_px.unwrap_or(0),
                }
            });
        let detector = Detector {
            session,
            package,
            contract,
            io,
            input,
            thresholds,
            providers,
        };
        if let Some(t) = thresholds {
            detector.check_threshold("image threshold", t.image)?;
            detector.check_threshold("pixel threshold", t.pixel)?;
        }
        Ok(detector)
    }

    /// Refuses a threshold that cannot decide with this model: anomalib normalises scores and
    /// maps into [0, 1], so 1 or more would pass every part and a negative value reject every
    /// part, whatever the model sees. A manifest threshold outside [0, 1) declares another
    /// scale (an export with normalisation off), and other graphs' score ranges are their own:
    /// neither is checked.
    pub fn check_threshold(&self, what: &'static str, value: f32) -> Result<(), ModelError> {
        let normalised = self.contract.kind == ContractKind::Anomalib
            && self
                .package
                .manifest
                .as_ref()
                .and_then(|m| m.decision.threshold)
                .is_none_or(|t| (0.0..1.0).contains(&t));
        if normalised && !(0.0..1.0).contains(&value) {
            return Err(ModelError::Threshold {
                model: self.package.name(),
                what,
                value,
            });
        }
        Ok(())
    }

    /// The thresholds in force, or the error that says how to provide one.
    pub fn require_thresholds(&self) -> Result<Thresholds, ModelError> {
        self.thresholds.ok_or_else(|| ModelError::NoThreshold {
            model: self.package.name(),
        })
    }

    /// Floats per image in a batch buffer.
    pub fn image_len(&self) -> usize {
        3 * self.input.width as usize * self.input.height as usize
    }

    /// Runs the model on `batch` (N images, CHW each, back to back) and returns N outputs.
    pub fn run(&mut self, batch: &[f32]) -> Result<Vec<RawOutput>, ModelError> {
        let per_image = self.image_len();
        if batch.is_empty() || !batch.len().is_multiple_of(per_image) {
            return Err(ModelError::BatchSize {
                got: batch.len(),
                per_image,
                width: self.input.width,
                height: self.input.height,
            });
        }
        let n = batch.len() / per_image;
        match self.contract.batch {
            BatchSize::Dynamic => self.run_chunk(batch, n, n),
            BatchSize::Fixed(fixed) => {
                let mut out = Vec::with_capacity(n);
                let mut padded = Vec::new();
                for chunk in batch.chunks(fixed * per_image) {
                    let real = chunk.len() / per_image;
                    if real == fixed {
                        out.extend(self.run_chunk(chunk, fixed, real)?);
                    } else {
                        padded.clear();
                        padded.extend_from_slice(chunk);
                        padded.resize(fixed * per_image, 0.0);
                        out.extend(self.run_chunk(&padded, fixed, real)?);
                    }
                }
                Ok(out)
            }
        }
    }

    /// Measures the model on blank images at batch sizes 1, 2, 4, … up to `max` (and `max`
    /// itself) and returns the size with the lowest time per image, with each size's figure in
    /// milliseconds per image. Each size runs once to warm up, then `reps` times; the median
    /// counts. A fixed-batch graph has one size, its own.
    ///
    /// Larger batches are not always faster per image: on a CPU whose threads a single image
    /// already keeps busy they are often slower, and a pipeline that batches to `max` regardless
    /// would lose throughput there.
    pub fn fastest_batch_size(
        &mut self,
        max: usize,
        reps: usize,
    ) -> Result<(usize, Vec<(usize, f64)>), ModelError> {
        if let BatchSize::Fixed(fixed) = self.contract.batch {
            return Ok((fixed, Vec::new()));
        }
        let max = max.max(1);
        let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |k| k.checked_mul(2))
            .take_while(|&k| k < max)
            .collect();
        sizes.push(max);
        let per_image = self.image_len();
        let blank = vec![0.0_f32; per_image * max];
        let mut figures = Vec::with_capacity(sizes.len());
        for &k in &sizes {
            let batch = &blank[..k * per_image];
            self.run(batch)?;
            let mut times: Vec<f64> = (0..reps.max(1))
                .map(|_| {
                    let start = std::time::Instant::now();
                    self.run(batch)
                        .map(|_| start.elapsed().as_secs_f64() * 1e3 / k as f64)
                })
                .collect::<Result<_, _>>()?;
            times.sort_by(f64::total_cmp);
            figures.push((k, times[times.len() / 2]));
        }
        let best = figures
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(1, |&(k, _)| k);
        Ok((best, figures))
    }

    /// Runs one graph call on `rows` images and keeps the first `keep` results.
    fn run_chunk(
        &mut self,
        data: &[f32],
        rows: usize,
        keep: usize,
    ) -> Result<Vec<RawOutput>, ModelError> {
        let shape = [
            rows,
            3,
            self.input.height as usize,
            self.input.width as usize,
        ];
        let tensor =
            ort::value::TensorRef::from_array_view((shape, data)).map_err(ModelError::Run)?;
        let input_name = self.contract.input.clone();
        let score_name = self.contract.score_output.clone();
        let map_name = self.contract.map_output.clone();
        let outputs = self
            .session
            .run(ort::inputs![input_name.as_str() => tensor])
            .map_err(ModelError::Run)?;

        let maps: Option<Vec<AnomalyMap>> = match &map_name {
            Some(name) => {
                let (shape, values) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| output_error(name, e.to_string()))?;
                Some(split_maps(name, shape, values, rows, keep)?)
            }
            None => None,
        };
        let scores: Vec<f32> = match &score_name {
            Some(name) => {
                let (shape, values) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| output_error(name, e.to_string()))?;
                if values.len() != rows {
                    return Err(output_error(
                        name,
                        format!("has shape {shape:?}, expected one score per image ({rows})"),
                    ));
                }
                values[..keep].to_vec()
            }
            None => maps
                .as_ref()
                .map(|maps| maps.iter().map(map_max).collect())
                .unwrap_or_default(),
        };
        let mut maps = maps.map(Vec::into_iter);
        Ok(scores
            .into_iter()
            .map(|score| RawOutput {
                score,
                map: maps.as_mut().and_then(Iterator::next),
            })
            .collect())
    }
}

/// Opens an ONNX Runtime session on `path` with linesight's settings (all graph optimisations,
/// intra-op threads, execution providers in order). [`Detector`] uses it, and so does the
/// benchmark's bare-ONNX-Runtime baseline, so that both run the very same session setup.
pub fn open_session(
    runtime: &OrtRuntime,
    path: &std::path::Path,
    options: &SessionOptions,
) -> Result<(ort::session::Session, Vec<ExecutionProvider>), ModelError> {
    let load = |source| ModelError::Load {
        path: path.to_path_buf(),
        source,
    };
    let mut builder = ort::session::Session::builder(&runtime.environment)
        .map_err(load)?
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
        .map_err(|e| load(e.into()))?;
    if options.intra_threads > 0 {
        builder = builder
            .with_intra_threads(options.intra_threads)
            .map_err(|e| load(e.into()))?;
    }
    if !options.intra_op_spinning {
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| load(e.into()))?;
    }
    let providers = register_providers(&mut builder, options, runtime)?;
    let session = builder.commit_from_file(path).map_err(load)?;
    Ok((session, providers))
}

fn output_error(name: &str, message: String) -> ModelError {
    ModelError::Output {
        name: name.to_string(),
        message,
    }
}

/// Highest finite value of a map (NaN never wins), `f32::NAN` for an all-NaN map.
fn map_max(map: &AnomalyMap) -> f32 {
    map.values
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NAN, f32::max)
}

fn split_maps(
    name: &str,
    shape: &ort::value::Shape,
    values: &[f32],
    rows: usize,
    keep: usize,
) -> Result<Vec<AnomalyMap>, ModelError> {
    let dims: &[i64] = shape;
    let (h, w) = match dims {
        [b, 1, h, w] | [b, h, w] if *b as usize == rows => (*h as usize, *w as usize),
        _ => {
            return Err(output_error(
                name,
                format!("has shape {dims:?}, expected [{rows}, 1, H, W]"),
            ));
        }
    };
    let plane = h * w;
    if plane == 0 || values.len() < plane * keep {
        return Err(output_error(
            name,
            format!(
                "has shape {dims:?} and {} values: no {h}x{w} map for each of {keep} images",
                values.len()
            ),
        ));
    }
    Ok(values
        .chunks_exact(plane)
        .take(keep)
        .map(|v| AnomalyMap {
            width: w as u32,
            height: h as u32,
            values: v.to_vec(),
        })
        .collect())
}

fn register_providers(
    builder: &mut ort::session::builder::SessionBuilder,
    options: &SessionOptions,
    runtime: &OrtRuntime,
) -> Result<Vec<ExecutionProvider>, ModelError> {
    let available = runtime.available_providers();
    let mut used = Vec::new();
    for &provider in &options.execution_providers {
        if provider == ExecutionProvider::Cpu {
            used.push(provider);
            continue;
        }
        if !available.iter().any(|a| a == provider.ort_name()) {
            return Err(ModelError::ProviderUnavailable {
                provider: provider.ort_name(),
                available: available.join(", "),
            });
        }
        register_gpu(builder, provider, options.device_id)?;
        used.push(provider);
    }
    if !used.contains(&ExecutionProvider::Cpu) {
        used.push(ExecutionProvider::Cpu);
    }
    Ok(used)
}

#[cfg(feature = "gpu")]
fn register_gpu(
    builder: &mut ort::session::builder::SessionBuilder,
    provider: ExecutionProvider,
    device_id: i32,
) -> Result<(), ModelError> {
    use ort::ep::ExecutionProvider as _;
    let result = match provider {
        ExecutionProvider::Cuda => ort::ep::CUDA::default()
            .with_device_id(device_id)
            .register(builder),
        ExecutionProvider::TensorRt => ort::ep::TensorRT::default()
            .with_device_id(device_id)
            .register(builder),
        ExecutionProvider::Cpu => Ok(()),
    };
    result.map_err(|source| ModelError::ProviderRegistration {
        provider: provider.ort_name(),
        source,
    })
}

#[cfg(not(feature = "gpu"))]
fn register_gpu(
    _builder: &mut ort::session::builder::SessionBuilder,
    provider: ExecutionProvider,
    _device_id: i32,
) -> Result<(), ModelError> {
    Err(ModelError::ProviderUnavailable {
        provider: provider.ort_name(),
        available: "this linesight build has no GPU support".into(),
    })
}
