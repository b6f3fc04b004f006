//! Actions: what happens to a pipeline result. Every result — verdicts, late and busy answers,
//! errors — goes to every configured [`ResultSink`], in the order the pipeline produced them.
//!
//! Sinks here: [`JsonLinesSink`] (a results folder, one JSON object per line, flushed to the OS
//! per result and synced to disk on [`ResultSink::flush`]), [`StdoutSink`] (one line per result
//! for people) and [`MemorySink`] (tests, embedding). The quality store plugs in as another sink.
//!
//! Invariant: a sink error is returned, never swallowed; the pipeline logs and counts it and
//! keeps delivering to the other sinks.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::pipeline::{InspectionResult, Outcome};

/// Errors of sinks.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("cannot create results folder {path}: {source}")]
    CreateFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where results go.
pub trait ResultSink: Send {
    /// Records one result.
    fn record(&mut self, result: &InspectionResult) -> Result<(), ActionError>;
    /// Makes everything recorded so far durable.
    fn flush(&mut self) -> Result<(), ActionError>;
}

/// `results.jsonl` in a folder: one JSON object per result and line.
#[derive(Debug)]
pub struct JsonLinesSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonLinesSink {
    /// Creates `folder` if needed and appends to `folder/results.jsonl`.
    pub fn open(folder: &Path) -> Result<JsonLinesSink, ActionError> {
        std::fs::create_dir_all(folder).map_err(|source| ActionError::CreateFolder {
            path: folder.to_path_buf(),
            source,
        })?;
        let path = folder.join("results.jsonl");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| ActionError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(JsonLinesSink {
            path,
            out: BufWriter::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> ActionError {
        ActionError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

impl ResultSink for JsonLinesSink {
    fn record(&mut self, result: &InspectionResult) -> Result<(), ActionError> {
        let line = serde_json::to_string(result).map_err(|e| self.io(e.into()))?;
        writeln!(self.out, "{line}").map_err(|e| self.io(e))?;
        // Handed to the OS per result, so a crash of the process loses nothing written.
        self.out.flush().map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), ActionError> {
        self.out.flush().map_err(|e| self.io(e))?;
        self.out.get_ref().sync_all().map_err(|e| self.io(e))
    }
}

/// One line per result on stdout.
#[derive(Debug, Default)]
pub struct StdoutSink;

/// The line [`StdoutSink`] prints.
pub fn summary_line(r: &InspectionResult) -> String {
    let what = match &r.outcome {
        Outcome::Inspected {
            score,
            verdict,
            regions,
            ..
        } => format!(
            "{score:.6} {:>6} {:>2} regions",
            verdict.to_string(),
            regions.len()
        ),
        Outcome::Late { reason, .. } => format!("late: {reason}"),
        Outcome::Busy { reason } => format!("busy: {reason}"),
        Outcome::Error { message } => format!("error: {message}"),
    };
    let part = r.part_id.as_deref().unwrap_or("-");
    format!(
        "{} {:<8} #{:<5} part {:<10} {what}  {:.1} ms  {}",
        r.frame_time, r.camera, r.sequence, part, r.timings.total_ms, r.origin
    )
}

impl ResultSink for StdoutSink {
    fn record(&mut self, result: &InspectionResult) -> Result<(), ActionError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", summary_line(result)).map_err(|source| ActionError::Write {
            path: "stdout".into(),
            source,
        })
    }

    fn flush(&mut self) -> Result<(), ActionError> {
        std::io::stdout()
            .lock()
            .flush()
            .map_err(|source| ActionError::Write {
                path: "stdout".into(),
                source,
            })
    }
}

/// Keeps results in memory; clones share the same list.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    results: Arc<Mutex<Vec<InspectionResult>>>,
}

impl MemorySink {
    /// Everything recorded so far.
    pub fn results(&self) -> Vec<InspectionResult> {
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResultSink for MemorySink {
    fn record(&mut self, result: &InspectionResult) -> Result<(), ActionError> {
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(result.clone());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ActionError> {
        Ok(())
    }
}
