//! `linesight serve`: the HTTP API (manual inspections, tasks, NCRs, lots) without cameras, for
//! an inspection station or the QA office. `linesight run` serves the same API beside its
//! cameras when `api.listen` is set; both build it here.
//!
//! SIGTERM or SIGINT stops it gracefully: requests in progress finish, then it exits 0.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::api::server::{self, ServerOptions};
use crate::api::{ApiState, InspectorPool, PipelineHandle, SlotConfig};
use crate::config::Settings;
use crate::inspect::Inspector;
use crate::model::registry::Validator;
use crate::model::{Detector, ModelPackage, OrtRuntime};
use crate::store::{Store, redact};

/// Options of `linesight serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides api.listen), such as 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// The model package that inspects manual uploads: `api.model`, else the first camera's model,
/// else the bundled demo model (written to the cache folder).
pub fn upload_model(settings: &Settings) -> anyhow::Result<PathBuf> {
    if let Some(model) = &settings.api.model {
        return Ok(model.clone());
    }
    if let Some(camera) = settings.cameras.first() {
        return Ok(camera.model.clone());
    }
    let demo = crate::model::runtime::cache_dir().join("demo-model");
    super::run::write_demo_model(&demo)?;
    Ok(demo)
}

/// Loads `api.inspectors` sessions of the upload model and assembles what the routes need.
pub async fn api_state(
    settings: &Settings,
    runtime: &'static OrtRuntime,
    store: Store,
    pipeline: Option<PipelineHandle>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<ApiState> {
    let model = upload_model(settings)?;
    let count = settings.api.inspectors;
    let options = settings.inference.clone();
    let limits = settings.decode;
    let path = model.clone();
    let inspectors = tokio::task::spawn_blocking(move || {
        (0..count)
            .map(|_| {
                let package = ModelPackage::open(&path)?;
                let detector = Detector::new(runtime, package, &options, None)?;
                let mut inspector = Inspector::new(detector, limits)?;
                inspector
                    .warm_up(1)
                    .context("the upload model failed its warm-up inference")?;
                Ok(inspector)
            })
            .collect::<anyhow::Result<Vec<Inspector>>>()
    })
    .await
    .context("model loading stopped")?
    .with_context(|| format!("cannot load the upload model {}", model.display()))?;
    tracing::info!(model = %model.display(), inspectors = count, "Manual uploads are inspected with this model.");
    Ok(ApiState {
        store,
        quality: settings.quality.clone(),
        config: settings.api.clone(),
        image_dir: settings.image_dir(),
        attachment_dir: settings.attachment_dir(),
        inspectors: Arc::new(InspectorPool::new(inspectors)),
        line: settings.pipeline.line.clone(),
        pipeline,
        metrics: Arc::default(),
        slots: settings
            .cameras
            .iter()
            .flat_map(|camera| {
                let default = SlotConfig {
                    slot: camera.id.clone(),
                    camera: camera.id.clone(),
                    recipe: None,
                    model: camera.model.clone(),
                    threshold: camera.threshold,
                };
                let recipes = camera.recipes.iter().map(|(name, r)| SlotConfig {
                    slot: format!("{}/{name}", camera.id),
                    camera: camera.id.clone(),
                    recipe: Some(name.clone()),
                    model: r.model.clone(),
                    threshold: r.threshold,
                });
                std::iter::once(default).chain(recipes)
            })
            .collect(),
        upload_model: model,
        validator: Validator {
            runtime,
            options: settings.inference.clone(),
            limits: settings.decode,
        },
        stopping,
        sign_in_throttle: settings.api.sign_in_throttle(),
    })
}

/// Binds `addr`, naming the setting in the error.
pub async fn bind(addr: &str, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {key} = {addr}"))
}

/// Serves `router` on `listener` until `stop` completes: the API's live streams are told to
/// end through `stopping`, requests in progress finish (at most `options.drain` more), then it
/// returns. Connections follow [`crate::api::server`]: HTTP/1.1 (HTTPS with `options.tls`,
/// see [`ServerOptions::for_api`]), headers within `api.header_timeout_ms`.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    options: ServerOptions,
    stop: impl Future<Output = ()> + Send + 'static,
    stopping: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let scheme = if options.tls.is_some() {
        "HTTPS"
    } else {
        "HTTP"
    };
    tracing::info!(address = %local, "Serving the {scheme} API (/api/v1, /ui/, /healthz, /readyz, /metrics).");
    server::serve(listener, router, options, async move {
        stop.await;
        let _ = stopping.send(true);
    })
    .await;
    Ok(())
}

/// Serves the API until SIGTERM or SIGINT.
pub fn run(settings: &Settings, ort_lib: Option<&Path>, args: ServeArgs) -> anyhow::Result<i32> {
    let mut settings = settings.clone();
    if let Some(listen) = args.listen {
        settings.api.listen = Some(listen);
    }
    settings.validate()?;
    let Some(listen) = settings.api.listen.clone() else {
        anyhow::bail!(
            "api.listen is not set: give an address with --listen 127.0.0.1:8080 or in the config file ([api] listen)"
        );
    };
    let options = ServerOptions::for_api(&settings.api, Duration::from_secs(30))?;
    let runtime = super::runtime(&settings, ort_lib)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let stop = super::run::stop_signal();
        let store = crate::outbox::open_store(&settings)
            .await
            .with_context(|| {
                format!(
                    "cannot open the quality store {}",
                    redact(&settings.store.effective_url())
                )
            })?;
        // Rows left for a sink no longer configured get a word at every start.
        crate::outbox::report_backlog(&store, &settings.outbox).await;
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        let keeping_store = store.clone();
        let state = api_state(&settings, runtime, store, None, stopping).await?;
        let keeping = super::run::start_image_keeping(
            &settings,
            keeping_store,
            state.metrics.image_keeping.clone(),
        );
        let listener = bind(&listen, "api.listen").await?;
        let outbox = super::run::start_outbox(&settings).await?;
        serve_api(listener, crate::api::app(state), options, stop, stopping_tx).await?;
        if let Some(keeping) = keeping {
            keeping.stop(Duration::from_secs(5)).await;
        }
        super::run::stop_outbox(outbox, &settings).await;
        eprintln!("stopped");
        Ok(0)
    })
}
