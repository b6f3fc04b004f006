//! A model package: a directory with `model.onnx`, its external weight files (if any), and an
//! optional `model.toml` manifest.
//!
//! The package's identity is its SHA-256: the digest of `model.onnx` followed by each external
//! data file in the order the graph first names them, then `model.toml` when there is one, i.e.
//! what `cat model.onnx model.onnx.data model.toml | sha256sum` prints (`sha256sum model.onnx`
//! for a bare graph with inline weights). The manifest is part of it because its thresholds and
//! preprocessing decide verdicts as much as the weights do. Every result carries it, so a record
//! always says exactly which model decided (EU GMP Annex 22: the model used for a result must be
//! identifiable).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::graph::{GraphError, GraphHeader, read_header};
use super::manifest::{Manifest, ManifestError};

/// File name of the graph inside a package.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of the manifest inside a package.
pub const MANIFEST_FILE: &str = "model.toml";

/// One file of the package with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// An opened model package.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    pub dir: PathBuf,
    pub onnx_path: PathBuf,
    pub manifest: Option<Manifest>,
    pub header: GraphHeader,
    pub files: Vec<PackageFile>,
    /// Package identity (see the module docs), lower-case hex.
    pub sha256: String,
    /// Digest of the graph and its external data without the manifest: the identity before the
    /// manifest joined it (`is_activated_as`).
    pub graph_sha256: String,
}

/// Errors opening a package.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("model package {path} does not exist")]
    NotFound { path: PathBuf },
    #[error(
        "model package {dir} has no {MODEL_FILE} (a model package is a directory with model.onnx and an optional model.toml)"
    )]
    NoModelFile { dir: PathBuf },
    #[error("model {onnx} needs external data file {file}, which is missing from {dir}")]
    MissingExternalData {
        onnx: PathBuf,
        file: String,
        dir: PathBuf,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl ModelPackage {
    /// Opens the package at `path`: a directory, or a `.onnx` file whose directory is the package.
    pub fn open(path: &Path) -> Result<ModelPackage, PackageError> {
        if !path.exists() {
            return Err(PackageError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let (dir, onnx_path) = if path.is_dir() {
            (path.to_path_buf(), path.join(MODEL_FILE))
        } else {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (dir, path.to_path_buf())
        };
        if !onnx_path.is_file() {
            return Err(PackageError::NoModelFile { dir });
        }
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| PackageError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let onnx_bytes = read(&onnx_path)?;
        let header = read_header(&onnx_bytes, &onnx_path)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        // Read once: the bytes parsed are the bytes hashed.
        let manifest_bytes = if manifest_path.is_file() {
            Some(read(&manifest_path)?)
        } else {
            None
        };
        let manifest = match &manifest_bytes {
            Some(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|e| ManifestError::Parse {
                    path: manifest_path.clone(),
                    message: format!("not UTF-8 text: {e}"),
                })?;
                Some(Manifest::parse(text, &manifest_path)?)
            }
            None => None,
        };

        let mut package_digest = Sha256::new();
        package_digest.update(&onnx_bytes);
        let mut files = vec![PackageFile {
            name: file_name(&onnx_path),
            bytes: onnx_bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&onnx_bytes)),
        }];
        drop(onnx_bytes);
        for location in &header.external_data {
            let data_path = dir.join(location);
            if !data_path.is_file() {
                return Err(PackageError::MissingExternalData {
                    onnx: onnx_path.clone(),
                    file: location.clone(),
                    dir: dir.clone(),
                });
            }
            let (bytes, digest) = hash_file(&data_path, &mut package_digest)?;
            files.push(PackageFile {
                name: location.clone(),
                bytes,
                sha256: digest,
            });
        }
        // The identity packages had before the manifest joined it, for activations recorded then.
        let graph_sha256 = hex::encode(package_digest.clone().finalize());
        if let Some(bytes) = &manifest_bytes {
            package_digest.update(bytes);
            files.push(PackageFile {
                name: MANIFEST_FILE.into(),
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            });
        }
        Ok(ModelPackage {
            dir,
            onnx_path,
            manifest,
            header,
            files,
            sha256: hex::encode(package_digest.finalize()),
            graph_sha256,
        })
    }

    /// Whether this package is the one an activation recorded as `sha256`: its identity, or,
    /// for an activation recorded before the manifest was part of the identity, the digest of
    /// the graph and its data alone.
    pub fn is_activated_as(&self, sha256: &str) -> bool {
        self.sha256 == sha256 || self.graph_sha256 == sha256
    }

    /// Display name: the manifest's, else the directory name.
    pub fn name(&self) -> String {
        self.manifest
            .as_ref()
            .and_then(|m| m.name.clone())
            .unwrap_or_else(|| {
                self.dir
                    .canonicalize()
                    .ok()
                    .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "model".into())
            })
    }

    /// The manifest's version, if any.
    pub fn version(&self) -> Option<&str> {
        self.manifest.as_ref().and_then(|m| m.version.as_deref())
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Streams `path` into both its own digest and the package digest (weights can be gigabytes).
fn hash_file(path: &Path, package: &mut Sha256) -> Result<(u64, String), PackageError> {
    let err = |source| PackageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut own = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        own.update(&buf[..n]);
        package.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(own.finalize())))
}
