//! The I/O contract of a model: which tensor is the image, which outputs carry the score and the
//! anomaly map, and what the scores mean. Detected from the graph's declared inputs and outputs,
//! completed or overridden by the manifest.
//!
//! Detection is a pure function over [`GraphIo`] so that every rule is unit-tested without ONNX
//! Runtime. Supported shapes:
//! - **anomalib 2.x export**: input `[B, 3, H, W]` float32; outputs `pred_score` (`[B, 1]` or
//!   `[B]`), optionally `anomaly_map` (`[B, 1, h, w]`), `pred_label`, `pred_mask`. Scores are
//!   normalised so that the threshold is 0.5.
//! - **anomaly map only**: a single float output `[B, 1, h, w]` or `[B, h, w]`; score = its max.
//! - **score only**: a single float output `[B]` or `[B, 1]`.
//!
//! The batch dimension may be dynamic or fixed (anomalib's PatchCore export fixes it); a fixed
//! batch is padded by the session.

use serde::Serialize;

use super::manifest::Manifest;

/// Element type of a tensor, as far as detection cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ElementType {
    F32,
    Bool,
    Other(String),
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElementType::F32 => f.write_str("float32"),
            ElementType::Bool => f.write_str("bool"),
            ElementType::Other(s) => f.write_str(s),
        }
    }
}

/// A declared graph input or output. `None` in the shape is a dynamic dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub element: ElementType,
    pub shape: Vec<Option<i64>>,
}

impl TensorSpec {
    /// `[batch_size, 3, 256, 256]`-style rendering for messages.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

impl std::fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.name, self.element, self.shape_string())
    }
}

/// The graph's declared inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphIo {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Batch dimension of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchSize {
    Dynamic,
    Fixed(usize),
}

/// What family of graph this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContractKind {
    /// anomalib 2.x export: normalised `pred_score`, threshold 0.5 baked in.
    Anomalib,
    /// One anomaly-map output; the image score is its maximum.
    AnomalyMap,
    /// One score output.
    Score,
}

impl std::fmt::Display for ContractKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContractKind::Anomalib => "anomalib 2.x export (pred_score, anomaly_map)",
            ContractKind::AnomalyMap => "anomaly map only (score = max of map)",
            ContractKind::Score => "score only",
        })
    }
}

/// The detected contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelContract {
    pub kind: ContractKind,
    pub input: String,
    pub width: u32,
    pub height: u32,
    pub batch: BatchSize,
    /// Output holding the image score, if the graph has one.
    pub score_output: Option<String>,
    /// Output holding the anomaly map, if the graph has one.
    pub map_output: Option<String>,
    /// Threshold implied by the graph (anomalib: 0.5), before manifest or command-line overrides.
    pub graph_threshold: Option<f32>,
}

/// Why a graph does not fit any supported contract. Each message names the tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractError {
    #[error("the model has {count} inputs ({names}); linesight needs exactly one image input")]
    InputCount { count: usize, names: String },
    #[error("input {name} is {element}; expected float32")]
    InputType { name: String, element: ElementType },
    #[error(
        "input {name} has shape {shape}; expected [batch, 3, height, width] (NCHW, 3 colour channels)"
    )]
    InputShape { name: String, shape: String },
    #[error(
        "input {name} has a dynamic {dim} ({shape}); set input.{dim} in model.toml to the size the model was trained at"
    )]
    DynamicSize {
        name: String,
        dim: &'static str,
        shape: String,
    },
    #[error("input {name} has fixed {dim} {graph}, but model.toml says input.{dim} = {manifest}")]
    SizeMismatch {
        name: String,
        dim: &'static str,
        graph: i64,
        manifest: u32,
    },
    #[error("input {name} has {dim} {value}; supported sizes are 1..=8192")]
    SizeOutOfRange {
        name: String,
        dim: &'static str,
        value: i64,
    },
    #[error(
        "input {name} has a fixed batch of {value}; supported fixed batches are 1..={MAX_FIXED_BATCH} (export the model with a smaller or a dynamic batch)"
    )]
    BatchOutOfRange { name: String, value: i64 },
    #[error("output {name} is {spec}; expected {expected}")]
    OutputShape {
        name: String,
        spec: String,
        expected: &'static str,
    },
    #[error(
        "no supported outputs among [{outputs}]; expected an anomalib export (pred_score [B,1] or [B], anomaly_map [B,1,H,W]), a single float anomaly map [B,1,H,W], or a single float score [B]"
    )]
    NoKnownOutputs { outputs: String },
}

fn is_score_shape(spec: &TensorSpec) -> bool {
    spec.element == ElementType::F32
        && match spec.shape.as_slice() {
            [_] => true,
            [_, one] => *one == Some(1),
            _ => false,
        }
}

fn is_map_shape(spec: &TensorSpec) -> bool {
    spec.element == ElementType::F32
        && match spec.shape.as_slice() {
            [_, _, _] => true,
            [_, one, _, _] => *one == Some(1),
            _ => false,
        }
}

fn resolve_dim(
    input: &TensorSpec,
    dim: &'static str,
    graph: Option<i64>,
    manifest: Option<u32>,
) -> Result<u32, ContractError> {
    let value = match (graph, manifest) {
        (Some(g), Some(m)) if g != i64::from(m) => {
            return Err(ContractError::SizeMismatch {
                name: input.name.clone(),
                dim,
                graph: g,
                manifest: m,
            });
        }
        (Some(g), _) => g,
        (None, Some(m)) => i64::from(m),
        (None, None) => {
            return Err(ContractError::DynamicSize {
                name: input.name.clone(),
                dim,
                shape: input.shape_string(),
            });
        }
    };
    if !(1..=8192).contains(&value) {
        return Err(ContractError::SizeOutOfRange {
            name: input.name.clone(),
            dim,
            value,
        });
    }
    Ok(value as u32)
}

/// The largest batch a graph may fix: as large as `pipeline.batch_size` may be. Every call of
/// such a graph holds that many images (padded), so a graph fixing a huge batch would take the
/// service's memory at its first warm-up.
pub const MAX_FIXED_BATCH: i64 = 256;

/// Detects the contract of a graph, using the manifest for what the graph leaves open.
pub fn detect(io: &GraphIo, manifest: Option<&Manifest>) -> Result<ModelContract, ContractError> {
    let [input] = io.inputs.as_slice() else {
        return Err(ContractError::InputCount {
            count: io.inputs.len(),
            names: io
                .inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    if input.element != ElementType::F32 {
        return Err(ContractError::InputType {
            name: input.name.clone(),
            element: input.element.clone(),
        });
    }
    let [batch, channels, height, width] = input.shape.as_slice() else {
        return Err(ContractError::InputShape {
            name: input.name.clone(),
            shape: input.shape_string(),
        });
    };
    if *channels != Some(3) {
        return Err(ContractError::InputShape {
            name: input.name.clone(),
            shape: input.shape_string(),
        });
    }
    let manifest_input = manifest.map(|m| &m.input);
    let height = resolve_dim(
        input,
        "height",
        *height,
        manifest_input.and_then(|i| i.height),
    )?;
    let width = resolve_dim(input, "width", *width, manifest_input.and_then(|i| i.width))?;
    let batch = match batch {
        Some(n) if *n > MAX_FIXED_BATCH => {
            return Err(ContractError::BatchOutOfRange {
                name: input.name.clone(),
                value: *n,
            });
        }
        Some(n) if *n >= 1 => BatchSize::Fixed(*n as usize),
        Some(_) | None => BatchSize::Dynamic,
    };

    let find = |name: &str| io.outputs.iter().find(|o| o.name == name);
    let (kind, score_output, map_output, graph_threshold) = if let Some(score) = find("pred_score")
    {
        if !is_score_shape(score) {
            return Err(ContractError::OutputShape {
                name: score.name.clone(),
                spec: format!("{} {}", score.element, score.shape_string()),
                expected: "float32 [B, 1] or [B]",
            });
        }
        let map = match find("anomaly_map") {
            Some(map) if !is_map_shape(map) => {
                return Err(ContractError::OutputShape {
                    name: map.name.clone(),
                    spec: format!("{} {}", map.element, map.shape_string()),
                    expected: "float32 [B, 1, H, W] or [B, H, W]",
                });
            }
            Some(map) => Some(map.name.clone()),
            None => None,
        };
        (
            ContractKind::Anomalib,
            Some(score.name.clone()),
            map,
            Some(0.5),
        )
    } else {
        match io.outputs.as_slice() {
            [only] if is_map_shape(only) => (
                ContractKind::AnomalyMap,
                None,
                Some(only.name.clone()),
                None,
            ),
            [only] if is_score_shape(only) => {
                (ContractKind::Score, Some(only.name.clone()), None, None)
            }
            outputs => {
                return Err(ContractError::NoKnownOutputs {
                    outputs: outputs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        }
    };
    Ok(ModelContract {
        kind,
        input: input.name.clone(),
        width,
        height,
        batch,
        score_output,
        map_output,
        graph_threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn t(name: &str, element: ElementType, shape: &[Option<i64>]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            element,
            shape: shape.to_vec(),
        }
    }
    const B: Option<i64> = None;
    fn n(v: i64) -> Option<i64> {
        Some(v)
    }
    fn image_input() -> TensorSpec {
        t("input", ElementType::F32, &[B, n(3), n(256), n(256)])
    }
    fn anomalib_outputs() -> Vec<TensorSpec> {
        vec![
            t("pred_score", ElementType::F32, &[B, n(1)]),
            t("pred_label", ElementType::Bool, &[B, n(1)]),
            t("anomaly_map", ElementType::F32, &[B, n(1), n(256), n(256)]),
            t("pred_mask", ElementType::Bool, &[B, n(1), n(256), n(256)]),
        ]
    }
    fn manifest(text: &str) -> Manifest {
        Manifest::parse(text, Path::new("model.toml")).unwrap()
    }

    #[test]
    fn anomalib_padim_export_is_detected() {
        let io = GraphIo {
            inputs: vec![image_input()],
            outputs: anomalib_outputs(),
        };
        let c = detect(&io, None).unwrap();
        assert_eq!(c.kind, ContractKind::Anomalib);
        assert_eq!((c.width, c.height), (256, 256));
        assert_eq!(c.batch, BatchSize::Dynamic);
        assert_eq!(c.score_output.as_deref(), Some("pred_score"));
        assert_eq!(c.map_output.as_deref(), Some("anomaly_map"));
        assert_eq!(c.graph_threshold, Some(0.5));
    }

    #[test]
    fn patchcore_style_fixed_batch_and_flat_score() {
        let io = GraphIo {
            inputs: vec![t("input", ElementType::F32, &[n(1), n(3), n(224), n(224)])],
            outputs: vec![
                t("pred_score", ElementType::F32, &[n(1)]),
                t(
                    "anomaly_map",
                    ElementType::F32,
                    &[n(1), n(1), n(224), n(224)],
                ),
            ],
        };
        let c = detect(&io, None).unwrap();
        assert_eq!(c.batch, BatchSize::Fixed(1));
        assert_eq!(c.kind, ContractKind::Anomalib);
    }

    #[test]
    fn a_fixed_batch_past_the_limit_is_refused_with_its_size() {
        let with_batch = |b: i64| GraphIo {
            inputs: vec![t("input", ElementType::F32, &[n(b), n(3), n(256), n(256)])],
            outputs: anomalib_outputs(),
        };
        assert_eq!(
            detect(&with_batch(MAX_FIXED_BATCH), None).unwrap().batch,
            BatchSize::Fixed(256)
        );
        // Every call of such a graph would hold a million padded images.
        let e = detect(&with_batch(1_000_000), None).unwrap_err();
        assert!(
            matches!(
                e,
                ContractError::BatchOutOfRange {
                    value: 1_000_000,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("1..=256"), "{e}");
    }

    #[test]
    fn single_map_and_single_score_graphs() {
        let map = GraphIo {
            inputs: vec![image_input()],
            outputs: vec![t("heat", ElementType::F32, &[B, n(1), n(64), n(64)])],
        };
        let c = detect(&map, None).unwrap();
        assert_eq!(c.kind, ContractKind::AnomalyMap);
        assert_eq!(c.map_output.as_deref(), Some("heat"));
        assert_eq!(c.graph_threshold, None);

        let score = GraphIo {
            inputs: vec![image_input()],
            outputs: vec![t("score", ElementType::F32, &[B])],
        };
        let c = detect(&score, None).unwrap();
        assert_eq!(c.kind, ContractKind::Score);
        assert_eq!(c.score_output.as_deref(), Some("score"));
    }

    #[test]
    fn dynamic_size_needs_the_manifest() {
        let io = GraphIo {
            inputs: vec![t("input", ElementType::F32, &[B, n(3), B, B])],
            outputs: anomalib_outputs(),
        };
        let err = detect(&io, None).unwrap_err();
        assert!(err.to_string().contains("input.height"), "{err}");
        let m = manifest("[input]\nwidth = 320\nheight = 240\n");
        let c = detect(&io, Some(&m)).unwrap();
        assert_eq!((c.width, c.height), (320, 240));
    }

    #[test]
    fn manifest_cannot_contradict_a_fixed_size() {
        let io = GraphIo {
            inputs: vec![image_input()],
            outputs: anomalib_outputs(),
        };
        let err = detect(&io, Some(&manifest("[input]\nwidth = 224\n"))).unwrap_err();
        assert_eq!(
            err,
            ContractError::SizeMismatch {
                name: "input".into(),
                dim: "width",
                graph: 256,
                manifest: 224
            }
        );
    }

    #[test]
    fn bad_inputs_name_the_tensor() {
        let cases = [
            (
                vec![t(
                    "x",
                    ElementType::Other("int64".into()),
                    &[B, n(3), n(8), n(8)],
                )],
                "input x is int64; expected float32",
            ),
            (
                vec![t("x", ElementType::F32, &[B, n(768)])],
                "input x has shape [?, 768]",
            ),
            (
                vec![t("x", ElementType::F32, &[B, n(1), n(8), n(8)])],
                "3 colour channels",
            ),
            (vec![image_input(), image_input()], "has 2 inputs"),
            (vec![], "has 0 inputs"),
        ];
        for (inputs, expected) in cases {
            let io = GraphIo {
                inputs,
                outputs: anomalib_outputs(),
            };
            let err = detect(&io, None).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn unknown_outputs_are_listed() {
        let io = GraphIo {
            inputs: vec![image_input()],
            outputs: vec![
                t("logits", ElementType::F32, &[B, n(10)]),
                t("features", ElementType::F32, &[B, n(10)]),
            ],
        };
        let err = detect(&io, None).unwrap_err().to_string();
        assert!(err.contains("logits float32 [?, 10]"), "{err}");
        assert!(err.contains("features"), "{err}");
    }

    #[test]
    fn malformed_anomalib_outputs_name_the_tensor() {
        let io = GraphIo {
            inputs: vec![image_input()],
            outputs: vec![t("pred_score", ElementType::F32, &[B, n(2)])],
        };
        let err = detect(&io, None).unwrap_err().to_string();
        assert!(err.contains("output pred_score"), "{err}");
        let io = GraphIo {
            inputs: vec![image_input()],
            outputs: vec![
                t("pred_score", ElementType::F32, &[B]),
                t("anomaly_map", ElementType::Bool, &[B, n(1), n(8), n(8)]),
            ],
        };
        let err = detect(&io, None).unwrap_err().to_string();
        assert!(err.contains("output anomaly_map is bool"), "{err}");
    }
}
