//! Settings, layered: embedded defaults → `--config FILE` (TOML, or JSON when it ends in `.json`) → `LINESIGHT__SECTION__KEY`
//! environment variables (e.g. `LINESIGHT__INFERENCE__INTRA_THREADS=2`).
//!
//! Each module owns its section's type; this module only composes them, loads the layers and
//! validates the result, reporting every problem at once.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Json, Serialized, Toml};
use figment::value::{Dict, Map, Num, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::model::{ExecutionProvider, SessionOptions};
use crate::preprocess::DecodeLimits;
use crate::telemetry::LogConfig;

/// `[runtime]`: where ONNX Runtime comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so`; tried after `--ort-lib` and `ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
}

/// All settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub runtime: RuntimeConfig,
    pub inference: SessionOptions,
    pub decode: DecodeLimits,
    pub log: LogConfig,
    pub store: crate::store::StoreConfig,
    pub quality: crate::quality::QualityConfig,
    pub pipeline: crate::pipeline::PipelineConfig,
    pub cameras: Vec<crate::pipeline::CameraConfig>,
    pub outbox: crate::outbox::OutboxConfig,
    pub models: crate::model::registry::ModelsConfig,
    pub api: crate::api::ApiConfig,
}

/// The `LINESIGHT__SECTION__KEY` environment variables as figment's [`Env`] reads them, except
/// that a value that would read as a whole number or a boolean stays the text it is: a lot, a
/// line, a client id or a password may be all digits (`LINESIGHT__PIPELINE__DEFAULT_LOT=0012` is
/// the lot "0012", not the number 12, nor a type error that prints the value). The settings are
/// extracted lossily, so keys that take a number or a boolean read it from that text; decimals,
/// lists and tables (`[a, b]`, `{k = v}`) are parsed as figment parses them.
struct EnvText(Env);

impl Provider for EnvText {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, text) in self.0.iter() {
            let Ok(parsed) = text.parse::<Value>();
            let value = match parsed {
                // Decimals stay the f64 figment parsed (read back from text they would pass
                // through f32: 0.05 would become 0.05000000074505806).
                // A secret is text whatever it looks like ("1234.5678" too).
                _ if key
                    .as_str()
                    .rsplit('.')
                    .next()
                    .is_some_and(crate::store::names_a_secret) =>
                {
                    Value::from(text)
                }
                Value::Num(_, Num::F32(_) | Num::F64(_)) => parsed,
                Value::Num(..) | Value::Bool(..) => Value::from(text),
                parsed => parsed,
            };
            if let Some(nested) = figment::util::nest(key.as_str(), value).into_dict() {
                merge_into(&mut dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// `e` with the value it quotes hidden when its key holds a secret: a password written as a
/// number in the file (`password = 12345678`) is a type error that would print it.
fn hide_secret(mut e: figment::Error) -> figment::Error {
    use figment::error::{Actual, Kind};
    if e.path.iter().any(|p| crate::store::names_a_secret(p)) {
        let hidden = || Actual::Other("a value (not shown: the key holds a secret)".into());
        e.kind = match e.kind {
            Kind::InvalidType(_, expected) => Kind::InvalidType(hidden(), expected),
            Kind::InvalidValue(_, expected) => Kind::InvalidValue(hidden(), expected),
            kind => kind,
        };
    }
    e
}

/// A parse error with the value hidden on each quoted source line (`2 | password = hunter2`)
/// whose key holds a secret: an unquoted password is the likeliest mistake of all.
fn hide_quoted_secrets(message: &str) -> String {
    message
        .lines()
        .map(|line| {
            let Some((gutter, source)) = line.split_once(" | ") else {
                return line.to_owned();
            };
            match source.split_once('=') {
                Some((key, _))
                    if gutter.trim().chars().all(|c| c.is_ascii_digit())
                        && key
                            .trim()
                            .trim_matches('"')
                            .rsplit('.')
                            .next()
                            .is_some_and(crate::store::names_a_secret) =>
                {
                    format!("{gutter} | {key}= (not shown: the key holds a secret)")
                }
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `incoming` merged into `dict`, tables key by key (two variables of one section both count).
fn merge_into(dict: &mut Dict, incoming: Dict) {
    for (key, value) in incoming {
        match (dict.get_mut(&key), value) {
            (Some(Value::Dict(_, have)), Value::Dict(_, more)) => merge_into(have, more),
            (_, value) => {
                dict.insert(key, value);
            }
        }
    }
}

/// The problem with `path`, the value of `key`, when it is not a file this account can read
/// the metadata of: missing, not a file, or in a folder it may not enter (the message says
/// which). For files read when a service starts (TLS keys and certificates).
pub fn file_problem(key: &str, path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(_) => Some(format!("{key} = {}: not a file", path.display())),
        Err(e) => Some(format!("{key} = {}: {e}", path.display())),
    }
}

/// Whether listening on both addresses (same port) would collide: the same address, or an
/// unspecified one (`0.0.0.0`, `::`) of the family of the other; `::` also takes IPv4 (a
/// dual-stack socket, as the service opens them).
fn binds_overlap(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    let dual_stack = |x: std::net::IpAddr| x.is_ipv6() && x.is_unspecified();
    a == b
        || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
        || dual_stack(a)
        || dual_stack(b)
}

/// Configuration problems, all of them.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Settings {
    /// Loads defaults, then `file` (if given), then the environment, and checks the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let settings = Self::read(file)?;
        settings.validate()?;
        Ok(settings)
    }

    /// [`Settings::load`] without the range checks: what the layers say, when it reads at all
    /// (`config check` then also checks the model packages of settings that are out of range).
    pub fn read(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError {
                    problems: vec![format!("config file {} does not exist", path.display())],
                });
            }
            // JSON is what Greengrass renders from a component's configuration.
            figment = if path.extension().is_some_and(|e| e == "json") {
                figment.merge(Json::file_exact(path))
            } else {
                figment.merge(Toml::file_exact(path))
            };
        }
        // A file that does not parse would fail every section alike: said once, naming it.
        if let Err(unreadable) = figment.data() {
            let file = file.map_or_else(String::new, |p| format!("{}: ", p.display()));
            return Err(ConfigError {
                problems: unreadable
                    .into_iter()
                    .map(|e| hide_quoted_secrets(&format!("{file}{e}")))
                    .collect(),
            });
        }
        // The file is read strictly: `record = "no"` there is a mistake, not a boolean.
        if let Err(e) = figment.extract::<Settings>() {
            return Err(Self::every_problem(&figment, e, false));
        }
        // With the environment, lossily: a key that takes a number or a boolean also reads it
        // from text, which is how `EnvText` hands over the environment's values.
        let figment = figment.merge(EnvText(Env::prefixed("LINESIGHT__").split("__")));
        match figment.extract_lossy() {
            Ok(settings) => Ok(settings),
            Err(e) => Err(Self::every_problem(&figment, e, true)),
        }
    }

    /// When the settings do not even read (a wrong type, a misspelt key), deserialising stops
    /// at the first mistake. So each section is read on its own, and the sections that read
    /// are also checked: one start-up shows a mistake in every section, not one per run.
    fn every_problem(figment: &Figment, first: figment::Error, lossy: bool) -> ConfigError {
        let mut problems: Vec<String> = Vec::new();
        let mut failed: Vec<&str> = Vec::new();
        let mut partial = Settings::default();
        macro_rules! read {
            ($($field:ident),+ $(,)?) => {
                // The sections read, for the unknown-section check below.
                const SECTIONS: &[&str] = &[$(stringify!($field)),+];
                $(
                let section = if lossy {
                    figment.extract_inner_lossy(stringify!($field))
                } else {
                    figment.extract_inner(stringify!($field))
                };
                match section {
                    Ok(value) => partial.$field = value,
                    Err(e) => {
                        failed.push(stringify!($field));
                        // Read on its own, a section's key comes out as "key.section":
                        // named in the usual order.
                        problems.extend(e.into_iter().map(|mut e| {
                            e.path.retain(|p| p != stringify!($field));
                            e.path.insert(0, stringify!($field).to_string());
                            hide_secret(e).to_string()
                        }));
                    }
                }
            )+};
        }
        read!(
            runtime, inference, decode, log, store, quality, pipeline, cameras, outbox, models, api
        );
        // A section of no known name (a misspelt one) is named whatever else is wrong.
        if let Ok(data) = figment::Provider::data(figment) {
            for dict in data.values() {
                for key in dict.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
                    problems.push(format!(
                        "unknown section {key:?}: the sections are {}",
                        SECTIONS.join(", ")
                    ));
                }
            }
        }
        // Anything else the whole read found (it stops at its first mistake).
        if problems.is_empty() {
            problems.extend(first.into_iter().map(|e| hide_secret(e).to_string()));
        }
        // The checks of the sections that did read; those about a section that did not would
        // judge its defaults.
        if let Err(checked) = partial.validate() {
            problems.extend(checked.problems.into_iter().filter(|p| {
                !failed
                    .iter()
                    .any(|f| p.starts_with(&format!("{f}.")) || p.starts_with(&format!("{f}[")))
            }));
        }
        problems.dedup();
        ConfigError { problems }
    }

    /// Checks ranges that types cannot express; every problem is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.inference.intra_threads > 256 {
            problems.push(format!(
                "inference.intra_threads = {}: must be between 0 (ONNX Runtime default) and 256",
                self.inference.intra_threads
            ));
        }
        let providers = &self.inference.execution_providers;
        if providers.is_empty() {
            problems.push(
                "inference.execution_providers is empty: list at least one of \"cpu\", \"cuda\", \"tensorrt\""
                    .into(),
            );
        }
        if let Some(at) = providers.iter().position(|p| *p == ExecutionProvider::Cpu)
            && at + 1 < providers.len()
        {
            problems.push(
                "inference.execution_providers: \"cpu\" must come last (ONNX Runtime falls back \
                 to the CPU after every other provider, whatever the order given)"
                    .into(),
            );
        }
        for (field, value) in [
            ("decode.max_width", self.decode.max_width),
            ("decode.max_height", self.decode.max_height),
        ] {
            if !(1..=65_535).contains(&value) {
                problems.push(format!("{field} = {value}: must be between 1 and 65535"));
            }
        }
        if self.decode.max_alloc_bytes < 1 << 20 {
            problems.push(format!(
                "decode.max_alloc_bytes = {}: must be at least 1048576 (1 MiB)",
                self.decode.max_alloc_bytes
            ));
        }
        problems.extend(self.store.problems());
        problems.extend(self.quality.problems());
        if self.quality.image_dir.is_some() && self.image_dir() == self.attachment_dir() {
            problems.push(format!(
                "quality.image_dir = {}: must not be the NCR attachment folder (store.data_dir/attachments): image retention would delete attachments",
                self.image_dir().display()
            ));
        }
        if self.outbox.upload.is_some()
            && self.outbox.sample_limit_bytes() > self.quality.image_quota_bytes / 2
        {
            problems.push(format!(
                "outbox.max_bytes = {} with sample_share_percent = {}: samples waiting for their upload may hold {} bytes of images, which image retention keeps; must be at most half of quality.image_quota_bytes ({})",
                self.outbox.max_bytes,
                self.outbox.sample_share_percent,
                self.outbox.sample_limit_bytes(),
                self.quality.image_quota_bytes
            ));
        }
        problems.extend(self.outbox.problems());
        problems.extend(self.models.problems());
        problems.extend(self.api.problems());
        problems.extend(crate::pipeline::config::problems(
            &self.pipeline,
            &self.cameras,
        ));
        if let (Some(pipeline), Some(api)) = (&self.pipeline.listen, &self.api.listen)
            && let (Ok(p), Ok(a)) = (
                pipeline.parse::<std::net::SocketAddr>(),
                api.parse::<std::net::SocketAddr>(),
            )
            && p.port() == a.port()
            && p.port() != 0
            && binds_overlap(p.ip(), a.ip())
        {
            // `linesight run` binds both; the second bind would fail after the models loaded
            // and the cameras started.
            problems.push(format!(
                "pipeline.listen = {pipeline:?} and api.listen = {api:?} take the same port: give each its own"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Where NCR attachments are kept: `attachments` under `store.data_dir`.
    pub fn attachment_dir(&self) -> PathBuf {
        self.store.data_dir.join("attachments")
    }

    /// Where images and overlays are kept: `quality.image_dir`, else `images` under
    /// `store.data_dir`.
    pub fn image_dir(&self) -> PathBuf {
        self.quality
            .image_dir
            .clone()
            .unwrap_or_else(|| self.store.data_dir.join("images"))
    }

    /// The effective settings as TOML, with the passwords in `store.url` and in RTSP cameras'
    /// URLs redacted, and the outbox's secrets; secrets added later are redacted here too.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.store.url = shown.store.url.as_deref().map(crate::store::redact);
        shown.outbox = shown.outbox.redacted();
        for camera in &mut shown.cameras {
            if let crate::source::SourceConfig::Rtsp(rtsp) = &camera.source {
                camera.source = crate::source::SourceConfig::Rtsp(rtsp.redacted());
            }
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

#[cfg(test)]
// figment::Jail's closure returns figment::Error, which is large; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_all_problems_are_reported() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "linesight.toml",
                "[inference]\nintra_threads = 3\nexecution_providers = [\"cuda\", \"cpu\"]\n[decode]\nmax_width = 0\n",
            )?;
            let err = Settings::load(Some(Path::new("linesight.toml"))).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{err}");
            assert!(err.to_string().contains("decode.max_width = 0"), "{err}");
            jail.create_file(
                "cpu-first.toml",
                "[inference]\nexecution_providers = [\"cpu\", \"cuda\"]\n",
            )?;
            let err = Settings::load(Some(Path::new("cpu-first.toml"))).unwrap_err();
            assert!(err.to_string().contains("\"cpu\" must come last"), "{err}");

            jail.set_env("LINESIGHT__DECODE__MAX_WIDTH", "4096");
            jail.set_env("LINESIGHT__INFERENCE__INTRA_THREADS", "1");
            let s = Settings::load(Some(Path::new("linesight.toml"))).unwrap();
            assert_eq!(
                s.inference.intra_threads, 1,
                "environment wins over the file"
            );
            assert_eq!(
                s.inference.execution_providers,
                vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu]
            );
            assert_eq!(s.decode.max_width, 4096);
            assert_eq!(s.decode.max_height, DecodeLimits::default().max_height);
            Ok(())
        });
    }

    #[test]
    fn json_files_load_like_toml_files() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "linesight.json",
                r#"{"inference": {"intra_threads": 2}, "models": {"poll_interval_ms": 1000}}"#,
            )?;
            let s = Settings::load(Some(Path::new("linesight.json"))).unwrap();
            assert_eq!(s.inference.intra_threads, 2);
            assert_eq!(s.models.poll_interval_ms, 1000);
            jail.create_file("bad.json", r#"{"inference": {"intra_thread": 2}}"#)?;
            let err = Settings::load(Some(Path::new("bad.json"))).unwrap_err();
            assert!(err.to_string().contains("intra_thread"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_mistake_in_each_section_is_reported_in_one_go() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "typos.toml",
                "[inference]\nintra_thread = 2\n[pipeline]\nqueue_capacity = \"many\"\n\
                 [decode]\nmax_width = 0\n[api]\ntrusted_proxies = [\"ingress\"]\n",
            )?;
            let err = Settings::load(Some(Path::new("typos.toml"))).unwrap_err();
            let text = err.to_string();
            for expected in [
                "intra_thread",
                "queue_capacity",
                "decode.max_width = 0",
                "\"ingress\" is neither",
            ] {
                assert!(text.contains(expected), "{expected:?} missing from\n{text}");
            }
            jail.create_file(
                "section.toml",
                "[infrence]\nintra_threads = 2\n[pipeline]\nqueue_capacity = \"many\"\n",
            )?;
            let err = Settings::load(Some(Path::new("section.toml"))).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("infrence") && text.contains("queue_capacity"),
                "{text}"
            );
            assert_eq!(err.problems.len(), 2, "each once: {text}");
            Ok(())
        });
    }

    #[test]
    fn environment_values_that_look_like_numbers_are_text_where_text_is_wanted() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("LINESIGHT__PIPELINE__DEFAULT_LOT", "0012");
            jail.set_env("LINESIGHT__PIPELINE__LINE", "4711");
            jail.set_env("LINESIGHT__OUTBOX__MQTT__USERNAME", "true");
            jail.set_env("LINESIGHT__OUTBOX__MQTT__PASSWORD", "12345678");
            jail.set_env("LINESIGHT__PIPELINE__BATCH_SIZE", "4");
            jail.set_env("LINESIGHT__INFERENCE__INTRA_OP_SPINNING", "false");
            let s = Settings::load(None).unwrap();
            assert_eq!(s.pipeline.default_lot, "0012", "leading zeros kept");
            assert_eq!(s.pipeline.line, "4711");
            let mqtt = s.outbox.mqtt.as_ref().expect("set by its variables");
            assert_eq!(mqtt.username.as_deref(), Some("true"));
            assert_eq!(mqtt.password.as_deref(), Some("12345678"));
            assert_eq!(s.pipeline.batch_size, 4, "numbers still read as numbers");
            assert!(!s.inference.intra_op_spinning);
            jail.set_env("LINESIGHT__QUALITY__REJECT_RATE_ALERT", "0.05");
            jail.set_env("LINESIGHT__OUTBOX__MQTT__PASSWORD", "1234.5678");
            let s = Settings::load(None).unwrap();
            assert_eq!(s.quality.reject_rate_alert, 0.05, "decimals exactly");
            let mqtt = s.outbox.mqtt.as_ref().unwrap();
            assert_eq!(
                mqtt.password.as_deref(),
                Some("1234.5678"),
                "a secret is text"
            );
            jail.set_env("LINESIGHT__PIPELINE__BATCH_SIZE", "four");
            let err = Settings::load(None).unwrap_err();
            let text = err.to_string();
            assert!(text.to_lowercase().contains("batch_size"), "{text}");
            // The file is read strictly all the same.
            jail.create_file("strict.toml", "[pipeline]\nrecord = \"no\"\n")?;
            jail.set_env("LINESIGHT__PIPELINE__BATCH_SIZE", "4");
            let err = Settings::load(Some(Path::new("strict.toml"))).unwrap_err();
            assert!(err.to_string().contains("record"), "{err}");
            // A secret of the wrong type in the file is named, never printed; nor is one that
            // does not parse (no quotes).
            jail.clear_env();
            jail.create_file("bare.toml", "[outbox.mqtt]\npassword = hunter22\n")?;
            let err = Settings::load(Some(Path::new("bare.toml"))).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("bare.toml")
                    && text.contains("password")
                    && !text.contains("hunter22"),
                "{text}"
            );
            jail.create_file("typed.toml", "[outbox.mqtt]\npassword = 98765432\n")?;
            let err = Settings::load(Some(Path::new("typed.toml"))).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("outbox.mqtt.password") && !text.contains("98765432"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_pipeline_and_the_api_cannot_listen_on_one_port() {
        let mut s = Settings::default();
        s.pipeline.listen = Some("127.0.0.1:8090".into());
        s.api.listen = Some("0.0.0.0:8090".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("take the same port"), "{err}");
        s.api.listen = Some("[::]:8090".into());
        assert!(s.validate().is_err(), "a dual-stack socket takes IPv4 too");
        s.api.listen = Some("[::1]:8090".into());
        s.validate().unwrap();
        s.api.listen = Some("0.0.0.0:8080".into());
        s.validate().unwrap();
    }

    #[test]
    fn a_file_that_does_not_parse_is_reported_once() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "broken.toml",
                "[pipeline]
line = \"x\n",
            )?;
            let err = Settings::load(Some(Path::new("broken.toml"))).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{err}");
            assert!(err.to_string().contains("broken.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secrets_in_the_store_url_query_are_not_shown() {
        let mut s = Settings::default();
        s.store.url = Some("postgres://app@db/q?sslmode=require&password=hunter22".into());
        let shown = s.to_toml();
        assert!(!shown.contains("hunter22"), "{shown}");
        assert!(shown.contains("password=***"), "{shown}");
    }

    #[test]
    fn unknown_keys_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[inference]\nintra_thread = 2\n")?;
            let err = Settings::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(err.to_string().contains("intra_thread"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_load_from_the_file_and_the_environment_and_bad_ones_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "proxy.toml",
                "[api]\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::1\"]\n",
            )?;
            let s = Settings::load(Some(Path::new("proxy.toml"))).unwrap();
            let nets: Vec<String> = s
                .api
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(nets, ["10.0.0.0/8", "fd00::1/128"]);
            let shown = s.to_toml();
            assert!(shown.contains("10.0.0.0/8"), "{shown}");
            jail.create_file("bad.toml", "[api]\ntrusted_proxies = [\"ingress\"]\n")?;
            let err = Settings::load(Some(Path::new("bad.toml"))).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("trusted_proxies") && text.contains("\"ingress\" is neither"),
                "{text}"
            );
            jail.set_env("LINESIGHT__API__TRUSTED_PROXIES", "[\"172.16.0.0/12\"]");
            let s = Settings::load(Some(Path::new("proxy.toml"))).unwrap();
            assert_eq!(
                s.api.trusted_proxies,
                vec!["172.16.0.0/12".parse().unwrap()]
            );
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error_not_a_silent_default() {
        let err = Settings::load(Some(Path::new("/nonexistent/linesight.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn image_keeping_settings_that_would_lose_attachments_or_crowd_out_images_are_refused() {
        let mut s = Settings::default();
        s.store.data_dir = PathBuf::from("/var/lib/linesight");
        s.quality.image_dir = Some(PathBuf::from("/var/lib/linesight/attachments"));
        s.quality.image_quota_bytes = 1 << 30;
        s.outbox.upload = Some(crate::outbox::UploadConfig {
            destination: "s3://linesight-samples/plant-1".into(),
            site: "plant-1".into(),
            ..crate::outbox::UploadConfig::default()
        });
        let err = s.validate().unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].starts_with("quality.image_dir = /var/lib/linesight/attachments: must not be the NCR attachment folder"),
            "{err}"
        );
        assert!(
            err.problems[1]
                .contains("must be at most half of quality.image_quota_bytes (1073741824)"),
            "{err}"
        );
        s.quality.image_dir = None;
        s.quality.image_quota_bytes = 10 << 30;
        s.validate().unwrap();
    }

    #[test]
    fn defaults_render_as_toml_and_parse_back() {
        let s = Settings::default();
        let back: Settings = toml::from_str(&s.to_toml()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn database_passwords_are_redacted_when_shown() {
        let mut s = Settings::default();
        s.store.url = Some("postgres://app:hunter22@db:5432/quality".into());
        let shown = s.to_toml();
        assert!(!shown.contains("hunter22"), "{shown}");
        assert!(
            shown.contains("postgres://app:***@db:5432/quality"),
            "{shown}"
        );
    }

    #[test]
    fn rtsp_camera_passwords_are_redacted_when_shown() {
        let mut s = Settings::default();
        s.cameras.push(
            toml::from_str(
                "id = \"dock\"\nmodel = \"models/demo\"\n\
                 source = { kind = \"rtsp\", url = \"rtsp://admin:hunter33@10.0.0.7/stream1\" }",
            )
            .unwrap(),
        );
        let shown = s.to_toml();
        assert!(!shown.contains("hunter33"), "{shown}");
        assert!(
            shown.contains("rtsp://admin:***@10.0.0.7/stream1"),
            "{shown}"
        );
        // Only the copy shown is redacted.
        assert!(format!("{:?}", s.cameras[0].source).contains("hunter33"));
    }
}
