//! What the ONNX file itself says, read without ONNX Runtime: IR version, opsets, producer, and
//! the external data files its initializers point to.
//!
//! ONNX Runtime's C API does not expose opsets or external-data locations, so the `ModelProto`
//! header is decoded here with `prost`, declaring only the fields needed (protobuf skips the rest;
//! field numbers from onnx/onnx.proto). No protoc or generated code is involved.

use std::path::Path;

use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// Header facts of an ONNX model file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GraphHeader {
    pub ir_version: i64,
    pub producer: String,
    /// `(domain, version)`; the default domain is written `ai.onnx`.
    pub opsets: Vec<(String, i64)>,
    /// Relative paths of external weight files, in order of first use, without duplicates.
    pub external_data: Vec<String>,
}

impl GraphHeader {
    /// The opset of the default (`ai.onnx`) domain.
    pub fn default_opset(&self) -> Option<i64> {
        self.opsets
            .iter()
            .find(|(d, _)| d == "ai.onnx")
            .map(|(_, v)| *v)
    }
}

/// Errors reading the ONNX header.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{path} is not an ONNX model (protobuf decode failed: {reason})")]
    NotOnnx {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "{path} names external data {location:?} outside the model directory (only plain relative paths are allowed)"
    )]
    ExternalDataEscapes {
        path: std::path::PathBuf,
        location: String,
    },
}

/// Decodes the header of the ONNX model in `bytes`; `path` is only used in messages.
pub fn read_header(bytes: &[u8], path: &Path) -> Result<GraphHeader, GraphError> {
    let model = ModelProto::decode(bytes).map_err(|e| GraphError::NotOnnx {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if model.graph.is_none() || model.ir_version <= 0 {
        return Err(GraphError::NotOnnx {
            path: path.to_path_buf(),
            reason: "no graph or IR version".into(),
        });
    }
    let mut external_data: Vec<String> = Vec::new();
    for tensor in model.graph.iter().flat_map(|g| &g.initializer) {
        for entry in &tensor.external_data {
            if entry.key == "location" && !external_data.contains(&entry.value) {
                let location = Path::new(&entry.value);
                // A model package is self-contained: weights must not be read from elsewhere.
                let plain = location
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
                if !plain {
                    return Err(GraphError::ExternalDataEscapes {
                        path: path.to_path_buf(),
                        location: entry.value.clone(),
                    });
                }
                external_data.push(entry.value.clone());
            }
        }
    }
    let producer = match (
        model.producer_name.is_empty(),
        model.producer_version.is_empty(),
    ) {
        (true, _) => String::new(),
        (false, true) => model.producer_name,
        (false, false) => format!("{} {}", model.producer_name, model.producer_version),
    };
    Ok(GraphHeader {
        ir_version: model.ir_version,
        producer,
        opsets: model
            .opset_import
            .into_iter()
            .map(|o| {
                let domain = if o.domain.is_empty() {
                    "ai.onnx".to_string()
                } else {
                    o.domain
                };
                (domain, o.version)
            })
            .collect(),
        external_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(model: &ModelProto) -> Vec<u8> {
        model.encode_to_vec()
    }

    fn model_with_external(location: &str) -> ModelProto {
        ModelProto {
            ir_version: 10,
            producer_name: "pytorch".into(),
            producer_version: "2.15.0".into(),
            graph: Some(GraphProto {
                initializer: vec![
                    TensorProto {
                        external_data: vec![StringStringEntryProto {
                            key: "location".into(),
                            value: location.into(),
                        }],
                    },
                    TensorProto {
                        external_data: vec![StringStringEntryProto {
                            key: "location".into(),
                            value: location.into(),
                        }],
                    },
                ],
            }),
            opset_import: vec![
                OperatorSetIdProto {
                    domain: String::new(),
                    version: 18,
                },
                OperatorSetIdProto {
                    domain: "com.microsoft".into(),
                    version: 1,
                },
            ],
        }
    }

    #[test]
    fn header_fields_are_read() {
        let bytes = encode(&model_with_external("model.onnx.data"));
        let h = read_header(&bytes, Path::new("m.onnx")).unwrap();
        assert_eq!(h.ir_version, 10);
        assert_eq!(h.producer, "pytorch 2.15.0");
        assert_eq!(h.default_opset(), Some(18));
        assert_eq!(h.external_data, vec!["model.onnx.data".to_string()]);
    }

    #[test]
    fn external_data_outside_the_package_is_refused() {
        for bad in ["../weights.bin", "/etc/passwd"] {
            let bytes = encode(&model_with_external(bad));
            let err = read_header(&bytes, Path::new("m.onnx")).unwrap_err();
            assert!(
                matches!(err, GraphError::ExternalDataEscapes { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_is_not_onnx() {
        let err = read_header(b"\x89PNG\r\n\x1a\n not a model", Path::new("x.onnx")).unwrap_err();
        assert!(err.to_string().contains("not an ONNX model"), "{err}");
        let err = read_header(b"", Path::new("x.onnx")).unwrap_err();
        assert!(err.to_string().contains("not an ONNX model"), "{err}");
    }
}
