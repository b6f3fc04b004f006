//! One image in, one [`Inspection`] out: decode → preprocess → inference → postprocess →
//! decision, for callers that hold a [`Detector`] (the CLI now, the pipeline workers later).
//!
//! A bad image fails alone: [`Inspector::inspect_batch`] returns one result per input, so the
//! caller records the error and carries on with the others.

use std::time::Instant;

use image::RgbImage;
use serde::Serialize;

use crate::model::{Detector, ModelError, Thresholds};
use crate::postprocess::{AnomalyMap, DefectRegion, SourceGeometry, Verdict, extract_regions};
use crate::preprocess::{DecodeError, DecodeLimits, InputSpec, PreprocessError, decode, prepare};

/// Which model produced a result: name, version and package SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelIdentity {
    pub name: String,
    pub version: Option<String>,
    pub sha256: String,
}

/// Milliseconds spent in each stage for one image. Inference time is the batch's time divided
/// by the number of images in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimings {
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
}

impl StageTimings {
    pub fn total_ms(&self) -> f64 {
        self.decode_ms + self.preprocess_ms + self.inference_ms + self.postprocess_ms
    }
}

/// The result of inspecting one image.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Where the image came from (a path for files).
    pub source: String,
    pub width: u32,
    pub height: u32,
    pub score: f32,
    pub verdict: Verdict,
    /// Threshold the verdict was taken against.
    pub threshold: f32,
    pub regions: Vec<DefectRegion>,
    pub model: ModelIdentity,
    pub timings: StageTimings,
    /// The anomaly map at model resolution (not serialised; for overlays and pixel metrics).
    #[serde(skip)]
    pub map: Option<AnomalyMap>,
}

/// Why one image could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the model returned a non-finite score ({score})")]
    NonFiniteScore { score: f32 },
}

/// An image turned into a model input tensor, ready for inference.
///
/// Built where the pixels are (the camera's thread in the live pipeline) so that preprocessing
/// overlaps inference; [`Inspector::inspect_prepared`] checks that it was prepared for the
/// model that runs it.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub source: String,
    /// Size of the original image (regions are reported in its pixels).
    pub width: u32,
    pub height: u32,
    /// The input it was prepared for.
    pub spec: InputSpec,
    /// `3 × height × width` floats of `spec`.
    pub tensor: Vec<f32>,
    /// The pixels, kept when the tensor may have to be prepared again (a model swap).
    pub image: Option<std::sync::Arc<RgbImage>>,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
}

impl PreparedImage {
    /// Prepares `image` for `spec` (crop, exact resize, normalisation).
    pub fn new(source: String, image: &RgbImage, spec: &InputSpec) -> Result<Self, InspectError> {
        let start = Instant::now();
        let mut tensor = vec![0.0; 3 * spec.width as usize * spec.height as usize];
        prepare(image, spec, &mut tensor)?;
        Ok(PreparedImage {
            source,
            width: image.width(),
            height: image.height(),
            spec: spec.clone(),
            tensor,
            image: None,
            decode_ms: 0.0,
            preprocess_ms: ms(start),
        })
    }

    /// Prepares again for another input, from the kept pixels.
    fn prepare_again(&mut self, spec: &InputSpec) -> Result<(), InspectError> {
        let Some(image) = self.image.clone() else {
            return Err(InspectError::Model(ModelError::Output {
                name: "input".into(),
                message: format!(
                    "the image was prepared for a {}x{} input and its pixels were not kept",
                    self.spec.width, self.spec.height
                ),
            }));
        };
        let again = PreparedImage::new(self.source.clone(), &image, spec)?;
        self.preprocess_ms += again.preprocess_ms;
        self.spec = again.spec;
        self.tensor = again.tensor;
        Ok(())
    }
}

/// Runs images through one detector.
#[derive(Debug)]
pub struct Inspector {
    pub detector: Detector,
    pub limits: DecodeLimits,
    pub thresholds: Thresholds,
    identity: ModelIdentity,
    batch: Vec<f32>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl Inspector {
    /// An inspector for `detector`; fails when the detector has no threshold to decide with.
    pub fn new(detector: Detector, limits: DecodeLimits) -> Result<Inspector, ModelError> {
        let thresholds = detector.require_thresholds()?;
        let identity = ModelIdentity {
            name: detector.package.name(),
            version: detector.package.version().map(str::to_string),
            sha256: detector.package.sha256.clone(),
        };
        Ok(Inspector {
            detector,
            limits,
            thresholds,
            identity,
            batch: Vec::new(),
        })
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// Runs the new session once on `frames` blank frames (one call; a fixed-batch graph runs
    /// its own size). ONNX Runtime allocates a session's working memory on its first call
    /// (about 230 MiB for a PatchCore export, against 80 ms for the call itself): a service
    /// pays that here rather than on the first part it inspects, and a model that loads but
    /// cannot run fails before the service takes work.
    pub fn warm_up(&mut self, frames: usize) -> Result<(), InspectError> {
        let input = self.input().clone();
        let blank = RgbImage::new(input.width, input.height);
        let batch: Vec<(String, &RgbImage)> = (0..frames.max(1))
            .map(|i| (format!("warm-up {i}"), &blank))
            .collect();
        match self
            .inspect_images(&batch)
            .into_iter()
            .find_map(Result::err)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Decodes `bytes` within the configured limits.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, DecodeError> {
        decode(bytes, &self.limits)
    }

    /// Inspects already-decoded images as one batch; one result per image, in order.
    pub fn inspect_images(
        &mut self,
        images: &[(String, &RgbImage)],
    ) -> Vec<Result<Inspection, InspectError>> {
        let decode_ms = vec![0.0; images.len()];
        self.run_batch(images, &decode_ms)
    }

    /// Decodes and inspects encoded images as one batch; one result per image, in order.
    /// Returns the decoded images too (for overlays), `None` where decoding failed.
    pub fn inspect_batch(
        &mut self,
        items: &[(String, &[u8])],
    ) -> (Vec<Result<Inspection, InspectError>>, Vec<Option<RgbImage>>) {
        let mut decoded = Vec::with_capacity(items.len());
        let mut decode_ms = Vec::with_capacity(items.len());
        for (_, bytes) in items {
            let start = Instant::now();
            decoded.push(self.decode(bytes));
            decode_ms.push(ms(start));
        }
        let ok: Vec<(String, &RgbImage)> = items
            .iter()
            .zip(&decoded)
            .filter_map(|((name, _), d)| d.as_ref().ok().map(|img| (name.clone(), img)))
            .collect();
        let ok_ms: Vec<f64> = decoded
            .iter()
            .zip(&decode_ms)
            .filter(|(d, _)| d.is_ok())
            .map(|(_, t)| *t)
            .collect();
        let mut inspected = self.run_batch(&ok, &ok_ms).into_iter();
        let mut results = Vec::with_capacity(items.len());
        let mut images = Vec::with_capacity(items.len());
        for d in decoded {
            match d {
                Ok(img) => {
                    results.push(inspected.next().expect("one result per decoded image"));
                    images.push(Some(img));
                }
                Err(e) => {
                    results.push(Err(e.into()));
                    images.push(None);
                }
            }
        }
        (results, images)
    }

    fn run_batch(
        &mut self,
        images: &[(String, &RgbImage)],
        decode_ms: &[f64],
    ) -> Vec<Result<Inspection, InspectError>> {
        let mut results: Vec<Option<Result<Inspection, InspectError>>> =
            (0..images.len()).map(|_| None).collect();
        let mut prepared = Vec::with_capacity(images.len());
        for (index, (source, image)) in images.iter().enumerate() {
            match PreparedImage::new(source.clone(), image, &self.detector.input) {
                Ok(mut p) => {
                    p.decode_ms = decode_ms[index];
                    prepared.push((index, p));
                }
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let refs: Vec<&PreparedImage> = prepared.iter().map(|(_, p)| p).collect();
        for ((index, _), r) in prepared.iter().zip(self.inspect_prepared(&refs, None)) {
            results[*index] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.expect("every image has a result"))
            .collect()
    }

    /// The input this inspector's model expects (what [`PreparedImage::new`] needs).
    pub fn input(&self) -> &InputSpec {
        &self.detector.input
    }

    /// Runs images prepared beforehand (on another thread, say) as one batch and decides each
    /// against `threshold`, or the model's own image threshold when `None`. An image prepared
    /// for another input is prepared again from its pixels when it kept them, refused otherwise.
    pub fn inspect_prepared(
        &mut self,
        images: &[&PreparedImage],
        threshold: Option<f32>,
    ) -> Vec<Result<Inspection, InspectError>> {
        let mut results: Vec<Option<Result<Inspection, InspectError>>> =
            (0..images.len()).map(|_| None).collect();
        let mut ready: Vec<(usize, &PreparedImage)> = Vec::with_capacity(images.len());
        let mut redone: Vec<(usize, PreparedImage)> = Vec::new();
        self.batch.clear();
        for (index, p) in images.iter().enumerate() {
            if p.spec == self.detector.input {
                ready.push((index, p));
            } else {
                redone.push((index, (*p).clone()));
            }
        }
        for (index, p) in &mut redone {
            if let Err(e) = p.prepare_again(&self.detector.input) {
                results[*index] = Some(Err(e));
            }
        }
        ready.extend(
            redone
                .iter()
                .filter(|(i, _)| results[*i].is_none())
                .map(|(i, p)| (*i, p)),
        );
        ready.sort_by_key(|(i, _)| *i);
        // A single frame runs from its own tensor; only a batch is stacked into one buffer.
        // That copy is preparation too: each frame's preprocess time carries its share.
        let stacking = Instant::now();
        let input: &[f32] = match ready.as_slice() {
            [(_, p)] => &p.tensor,
            _ => {
                for (_, p) in &ready {
                    self.batch.extend_from_slice(&p.tensor);
                }
                &self.batch
            }
        };
        if !ready.is_empty() {
            let stack_ms = ms(stacking) / ready.len() as f64;
            let start = Instant::now();
            match self.detector.run(input) {
                Ok(outputs) => {
                    let inference_ms = ms(start) / ready.len() as f64;
                    for ((index, p), output) in ready.iter().zip(outputs) {
                        let post_start = Instant::now();
                        let result = self.decide(p, threshold, output.score, output.map);
                        results[*index] = Some(result.map(|mut inspection| {
                            inspection.timings = StageTimings {
                                decode_ms: p.decode_ms,
                                preprocess_ms: p.preprocess_ms + stack_ms,
                                inference_ms,
                                postprocess_ms: ms(post_start),
                            };
                            inspection
                        }));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for (index, _) in &ready {
                        results[*index] = Some(Err(InspectError::Model(ModelError::Output {
                            name: "batch".into(),
                            message: message.clone(),
                        })));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every image has a result"))
            .collect()
    }

    fn decide(
        &self,
        p: &PreparedImage,
        threshold: Option<f32>,
        score: f32,
        map: Option<AnomalyMap>,
    ) -> Result<Inspection, InspectError> {
        if !score.is_finite() {
            return Err(InspectError::NonFiniteScore { score });
        }
        let mut thresholds = self.thresholds;
        if let Some(t) = threshold {
            thresholds.image = t;
        }
        let verdict = Verdict::from_score(score, thresholds.image);
        let geometry = SourceGeometry {
            width: p.width,
            height: p.height,
            roi: self.detector.input.roi,
        };
        let regions = map.as_ref().map_or_else(Vec::new, |m| {
            extract_regions(m, thresholds.pixel, geometry, thresholds.min_region_area_px)
        });
        Ok(Inspection {
            source: p.source.clone(),
            width: p.width,
            height: p.height,
            score,
            verdict,
            threshold: thresholds.image,
            regions,
            model: self.identity.clone(),
            timings: StageTimings::default(),
            map,
        })
    }
}
