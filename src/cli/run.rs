//! `linesight run`: the long-running inspection service.
//!
//! `--config FILE` runs the cameras of `[[cameras]]`; `--demo` adds a synthetic camera with the
//! bundled demo model when none is configured, prints results and writes them to a results
//! folder. SIGTERM or SIGINT stops it gracefully (exit 0).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::actions::{JsonLinesSink, ResultSink, StdoutSink};
use crate::config::Settings;
use crate::model::registry::{ModelRegistry, Validator};
use crate::pipeline::http::{HttpState, app};
use crate::pipeline::{Camera, CameraConfig, Pipeline, TriggerMode};
use crate::pipeline::{ModelSwitch, Recorder};

/// `run`'s exit code after a stop that did not keep every result: the quality store refused
/// some or was still down at the shutdown deadline, or a sink could not write.
const EXIT_RESULTS_NOT_KEPT: i32 = 3;
use crate::source::SourceConfig;
use crate::store::{PruneReport, Store, StoreConfig, redact};

/// Options of `linesight run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run with embedded defaults: a synthetic camera and the bundled demo model; results are
    /// printed and written to the results folder.
    #[arg(long)]
    pub demo: bool,
    /// With --demo: stop after this many synthetic frames (default: run until stopped).
    #[arg(long, value_name = "N", requires = "demo")]
    pub frames: Option<u64>,
    /// Results folder (overrides pipeline.results_dir).
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
}

const DEMO_ONNX: &[u8] = include_bytes!("../../models/demo/model.onnx");
const DEMO_MANIFEST: &[u8] = include_bytes!("../../models/demo/model.toml");

/// Writes the bundled demo model package to `dir` (unchanged files are left alone).
pub fn write_demo_model(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in [("model.onnx", DEMO_ONNX), ("model.toml", DEMO_MANIFEST)] {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            // Write beside and rename, so that a second `run --demo` starting at the same time
            // never reads a half-written model.
            let partial = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&partial, bytes)
                .and_then(|()| std::fs::rename(&partial, &path))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// The demo's settings on top of what the layers gave.
fn demo_settings(settings: &mut Settings, frames: Option<u64>) -> anyhow::Result<()> {
    if settings.cameras.is_empty() {
        let model = crate::model::runtime::cache_dir().join("demo-model");
        write_demo_model(&model)?;
        settings.cameras.push(CameraConfig {
            id: "demo".into(),
            source: SourceConfig::Synthetic {
                seed: 1,
                defect_rate: 0.3,
                frames,
            },
            mode: TriggerMode::FreeRun,
            fps: 5.0,
            every_nth: 1,
            model,
            threshold: None,
            recipes: Default::default(),
        });
    }
    settings.pipeline.print_results = true;
    if settings.pipeline.results_dir.is_none() {
        settings.pipeline.results_dir = Some(PathBuf::from("linesight-results"));
    }
    // The demo keeps its quality store beside its results unless a store was configured.
    if settings.store.url.is_none()
        && settings.store.data_dir == StoreConfig::default().data_dir
        && let Some(dir) = &settings.pipeline.results_dir
    {
        settings.store.data_dir = dir.clone();
    }
    Ok(())
}

/// Follows the store's model activations into `switch`: every slot of the pipeline
/// (`<camera>`, `<camera>/<recipe>`) is watched; an activation validated here is swapped in,
/// one refused or failing to load leaves the current model serving.
fn follow_activations(
    store: crate::store::Store,
    switch: ModelSwitch,
    validator: Validator,
    config: &crate::model::registry::ModelsConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let registry = ModelRegistry::new();
    let slots: Vec<String> = switch.slots().into_iter().map(|(s, _)| s).collect();
    tracing::info!(slots = %slots.join(", "), "Following model activations (`linesight models activate --slot SLOT`).");
    let mut swaps = Vec::new();
    for slot in slots {
        let mut changes = registry.subscribe(&slot);
        let switch = switch.clone();
        let audit = store.clone();
        swaps.push(tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(active) = changes.borrow_and_update().clone() else {
                    continue;
                };
                match switch.swap(&slot, active.package.clone()).await {
                    Ok(model) => {
                        tracing::info!(slot = %slot, sha256 = %model.sha256, generation = active.generation, "Activated model serving.")
                    }
                    Err(e) => {
                        tracing::error!(slot = %slot, error = %e, "Activated model could not be loaded; the current model keeps serving.");
                        let instance = crate::model::registry::instance_name();
                        if let Err(e) = audit
                            .record_model_load_failure(&slot, active.activation_id, &active.sha256, &instance, &e.to_string())
                            .await
                        {
                            tracing::warn!(slot = %slot, error = %e, "Cannot audit the model load failure.");
                        }
                    }
                }
            }
        }));
    }
    let follower = crate::model::registry::follow(store, registry, validator, config, stop);
    tokio::spawn(async move {
        let _ = follower.await;
        // The registry (and its senders) went with the follower: the watchers end.
        for s in swaps {
            let _ = s.await;
        }
    })
}

/// Takes SIGTERM and SIGINT over now, and resolves at the first of them. Called first thing
/// in the runtime: a signal that comes while the service is still starting (loading and
/// warming models, opening the store) is then kept for the graceful stop that follows the
/// start, instead of killing the process with cameras and triggers already live. A second
/// signal ends the process at once (exit code 1): the way out of a start-up or a stop that
/// hangs (a store that does not answer); what was journalled is answered at the next start.
/// Where the handlers cannot be installed, Ctrl-C alone stops the service.
pub(super) fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = signal(SignalKind::terminate())
            .and_then(|term| signal(SignalKind::interrupt()).map(|interrupt| (term, interrupt)));
        let (first_tx, mut first_rx) = tokio::sync::watch::channel(false);
        match handlers {
            Ok((mut term, mut interrupt)) => {
                tokio::spawn(async move {
                    let mut signals = 0;
                    loop {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = interrupt.recv() => {}
                        }
                        signals += 1;
                        if signals == 1 {
                            tracing::info!(
                                "Stopping: finishing what is in flight (a second signal ends the process at once)."
                            );
                            let _ = first_tx.send(true);
                        } else {
                            eprintln!(
                                "second stop signal: exiting now, without finishing what is in flight"
                            );
                            std::process::exit(1);
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot take SIGTERM over; Ctrl-C stops the service.");
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = first_tx.send(true);
                });
            }
        }
        async move {
            let _ = first_rx.wait_for(|signalled| *signalled).await;
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the service until its sources finish or a signal comes.
pub fn run(settings: &Settings, ort_lib: Option<&Path>, args: RunArgs) -> anyhow::Result<i32> {
    let mut settings = settings.clone();
    // Before the demo's defaults, which put the demo's store in the results folder.
    if let Some(dir) = args.results {
        settings.pipeline.results_dir = Some(dir);
    }
    if args.demo {
        demo_settings(&mut settings, args.frames)?;
    }
    settings.validate()?;
    if settings.cameras.is_empty() {
        anyhow::bail!(
            "no cameras configured: add [[cameras]] entries to the config file, or use `linesight run --demo`"
        );
    }
    let runtime = crate::cli::runtime(&settings, ort_lib)?;
    let mut sinks: Vec<Box<dyn ResultSink>> = Vec::new();
    if let Some(dir) = &settings.pipeline.results_dir {
        let sink = JsonLinesSink::open(dir)?;
        tracing::info!(path = %sink.path().display(), "Writing results.");
        sinks.push(Box::new(sink));
    }
    if settings.pipeline.print_results {
        sinks.push(Box::new(StdoutSink));
    }
    let cameras: Vec<Camera> = settings
        .cameras
        .iter()
        .map(|c| Camera {
            config: c.clone(),
            source: Box::new(crate::source::LazySource::new(
                c.source.clone(),
                settings.decode,
            )),
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = rt.block_on(async move {
        let signalled = stop_signal();
        let recorder = if settings.pipeline.record {
            // Opened with the outbox when one is configured, so that every record's events and
            // samples are queued in the same transaction.
            let store = crate::outbox::open_store(&settings).await.with_context(|| {
                format!(
                    "cannot open the quality store {} (pipeline.record = false runs without it)",
                    redact(&settings.store.effective_url())
                )
            })?;
            tracing::info!(store = %redact(&settings.store.effective_url()), "Recording results in the quality store.");
            Some(Recorder {
                store,
                quality: settings.quality.clone(),
                line: settings.pipeline.line.clone(),
                default_lot: settings.pipeline.default_lot.clone(),
                images: settings.pipeline.store_images,
                image_dir: settings.image_dir(),
            })
        } else {
            None
        };
        // The store activations are followed from: the recorder's, else the API's.
        let store = match (&recorder, &settings.api.listen) {
            (Some(r), _) => Some(r.store.clone()),
            (None, Some(_)) => Some(
                crate::outbox::open_store(&settings)
                    .await
                    .context("cannot open the quality store for the HTTP API")?,
            ),
            (None, None) => None,
        };
        let mut cameras = cameras;
        if let Some(store) = &store {
            serve_activated_models(store, &mut cameras).await?;
        }
        let pipeline = Pipeline::start(
            settings.pipeline.clone(),
            runtime,
            settings.inference.clone(),
            settings.decode,
            cameras,
            sinks,
            recorder,
        )
        .await?;
        // Model activations (`linesight models activate`, other replicas) are followed from
        // the store and swapped into the running pipeline.
        let (stop_follow, follow_rx) = tokio::sync::watch::channel(false);
        let follower = store.clone().map(|store| {
            follow_activations(
                store,
                pipeline.model_switch(),
                Validator {
                    runtime,
                    options: settings.inference.clone(),
                    limits: settings.decode,
                },
                &settings.models,
                follow_rx,
            )
        });
        // The HTTP API (manual uploads, tasks, NCRs, the web UI) on `api.listen`, with the
        // pipeline's triggers (authenticated there) and metrics.
        let (api_stop, api_stop_rx) = tokio::sync::watch::channel(false);
        let mut api_store = None;
        let mut keeping_metrics = None;
        let api_server = match &settings.api.listen {
            Some(addr) => {
                let store = store
                    .clone()
                    .expect("the store is opened above when the API listens");
                api_store = Some(store.clone());
                let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
                let handle = crate::api::PipelineHandle {
                    triggers: pipeline.triggers(),
                    status: pipeline.status(),
                };
                let state =
                    super::serve::api_state(&settings, runtime, store, Some(handle), stopping)
                        .await?;
                keeping_metrics = Some(state.metrics.image_keeping.clone());
                let listener = super::serve::bind(addr, "api.listen").await?;
                let router = crate::api::app(state);
                let options =
                    crate::api::server::ServerOptions::for_api(&settings.api, Duration::from_secs(5))?;
                let mut stop_rx = api_stop_rx.clone();
                Some(tokio::spawn(async move {
                    let stop = async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    };
                    let served =
                        super::serve::serve_api(listener, router, options, stop, stopping_tx)
                            .await;
                    if let Err(e) = served {
                        tracing::error!(error = %format!("{e:#}"), "HTTP API failed.");
                    }
                }))
            }
            None => None,
        };
        let server = match &settings.pipeline.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on pipeline.listen = {addr}"))?;
                let local = listener.local_addr()?;
                tracing::info!(address = %local, "Serving triggers on POST /api/v1/triggers, metrics on GET /metrics.");
                let router = app(HttpState {
                    triggers: pipeline.triggers(),
                    status: pipeline.status(),
                    store: store.clone(),
                });
                // The same server as the API's listener (HTTP/1.1, api.header_timeout_ms, ...);
                // it stops with the API, once the cameras are done.
                let options = crate::api::server::ServerOptions::from_config(
                    &settings.api,
                    None,
                    Duration::from_secs(2),
                );
                let mut stop_rx = api_stop_rx.clone();
                Some(tokio::spawn(crate::api::server::serve(
                    listener,
                    router,
                    options,
                    async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    },
                )))
            }
            None => None,
        };
        // Wherever results or uploads are recorded, their images are kept in bounds.
        let recording_store = store.clone().or(api_store);
        if let Some(store) = &recording_store {
            // Rows left for a sink no longer configured get a word at every start.
            crate::outbox::report_backlog(store, &settings.outbox).await;
        }
        let keeping = recording_store.and_then(|store| {
            start_image_keeping(&settings, store, keeping_metrics.unwrap_or_default())
        });
        let outbox = start_outbox(&settings).await?;
        let summary = pipeline.run_until(signalled).await;
        let _ = stop_follow.send(true);
        if let Some(follower) = follower {
            let _ = follower.await;
        }
        // The API and the trigger endpoint finish the requests in progress (a few seconds at
        // most), then stop.
        let _ = api_stop.send(true);
        if let Some(mut server) = server
            && tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
        if let Some(mut api) = api_server
            && tokio::time::timeout(Duration::from_secs(10), &mut api)
                .await
                .is_err()
        {
            api.abort();
        }
        if let Some(keeping) = keeping {
            keeping.stop(Duration::from_secs(5)).await;
        }
        stop_outbox(outbox, &settings).await;
        eprintln!(
            "stopped: {} inspected, {} late, {} busy, {} errors, {} frames dropped",
            summary.inspected, summary.late, summary.busy, summary.errors, summary.dropped
        );
        if summary.all_kept() {
            return Ok(0);
        }
        // A supervisor must not read a stop that lost results from the store as a clean one.
        eprintln!(
            "NOT KEPT: {} results not recorded in the quality store, {} results a sink failed to write (the log names each; the results file, when configured, holds what the store did not take; triggers still pending in the journal are answered at the next start)",
            summary.not_recorded, summary.sink_errors
        );
        Ok(EXIT_RESULTS_NOT_KEPT)
    });
    // Everything that must be durable is flushed by now. A camera grab still blocked in its
    // driver (a line-triggered camera on a quiet line waits without a timeout) must not keep
    // the process alive: dropping the runtime would wait for it without limit.
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

/// Points every camera slot (`<camera>`, `<camera>/<recipe>`) that has an activation in the
/// store at the activated package, so that a service (re)started inspects with the model that
/// was activated, not the one its configuration file names. An activated package that is
/// missing or no longer has the activated SHA-256 stops the start: inspecting with a model
/// nobody activated is worse than not inspecting. Restore the package, or activate another.
async fn serve_activated_models(store: &Store, cameras: &mut [Camera]) -> anyhow::Result<()> {
    let active = store
        .active_models()
        .await
        .context("cannot read the activated models")?;
    for a in active {
        let (camera_id, recipe) = match a.slot.split_once('/') {
            Some((camera, recipe)) => (camera, Some(recipe)),
            None => (a.slot.as_str(), None),
        };
        // Slots of cameras this instance does not run are another instance's.
        let Some(camera) = cameras.iter_mut().find(|c| c.config.id == camera_id) else {
            continue;
        };
        let target = match recipe {
            None => &mut camera.config.model,
            Some(r) => match camera.config.recipes.get_mut(r) {
                Some(recipe) => &mut recipe.model,
                None => continue,
            },
        };
        let path = PathBuf::from(&a.package_path);
        let package = crate::model::ModelPackage::open(&path).with_context(|| {
            format!(
                "slot {} has model activation {} ({}), whose package cannot be opened; \
                 restore it or activate another model for the slot",
                a.slot,
                a.id,
                path.display()
            )
        })?;
        if !package.is_activated_as(&a.sha256) {
            anyhow::bail!(
                "slot {} has model activation {} of {} with SHA-256 {}, but the package there \
                 now has {}; restore the activated files or activate the package again",
                a.slot,
                a.id,
                path.display(),
                a.sha256,
                package.sha256
            );
        }
        if *target != path {
            tracing::info!(slot = %a.slot, activated = %path.display(), configured = %target.display(), activation = a.id, "Serving the activated model instead of the configured one.");
            *target = path;
        }
    }
    Ok(())
}

/// Outbox delivery (events over MQTT, samples to S3) when `[outbox]` configures a peer, after
/// queueing the model-change event of every camera.
pub(super) async fn start_outbox(
    settings: &Settings,
) -> anyhow::Result<Option<(crate::outbox::Delivery, crate::store::Store)>> {
    if !settings.outbox.enabled() {
        return Ok(None);
    }
    let store = crate::outbox::open_store(settings)
        .await
        .context("cannot open the quality store for the outbox")?;
    for c in &settings.cameras {
        let data = serde_json::json!({"camera": c.id, "model": c.model, "threshold": c.threshold});
        if let Err(e) =
            crate::outbox::append_event(&store, "model.active", &format!("camera:{}", c.id), data)
                .await
        {
            tracing::warn!(error = %e, "Cannot queue the model-change event.");
        }
    }
    let delivery = crate::outbox::Delivery::start(
        &store,
        &settings.outbox,
        settings.image_dir(),
        settings.store.data_dir.clone(),
    );
    Ok(Some((delivery, store)))
}

/// Drains the outbox within `pipeline.shutdown_deadline_ms`, then stops delivery; what the peers
/// have not confirmed by then stays queued for the next start.
pub(super) async fn stop_outbox(
    outbox: Option<(crate::outbox::Delivery, crate::store::Store)>,
    settings: &Settings,
) {
    if let Some((outbox, store)) = outbox {
        let deadline = std::time::Duration::from_millis(settings.pipeline.shutdown_deadline_ms);
        // Another instance delivering this database's outbox delivers what is left.
        if outbox.is_delivering() && !outbox.drain(&store, deadline).await {
            tracing::warn!(
                "Outbox not empty at shutdown; delivery resumes at the next start (or by another instance)."
            );
        }
        outbox.stop().await;
    }
}

/// One pass of image keeping with the settings' retention and quota
/// ([`Store::prune_images`]), plus the left-over temporary files of the attachment folder (NCR
/// attachments are never pruned). `linesight images prune` runs one; the services run
/// [`start_image_keeping`].
pub(super) async fn prune_images_once(
    settings: &Settings,
    store: &Store,
    remove_unrecorded: bool,
) -> Result<PruneReport, crate::store::StoreError> {
    let q = &settings.quality;
    let now = std::time::SystemTime::now();
    let mut report = store
        .prune_images(
            &settings.image_dir(),
            q.image_retention_days,
            q.image_quota_bytes,
            now,
            remove_unrecorded,
        )
        .await?;
    let attachments = settings.attachment_dir();
    let (files, bytes, errors) = tokio::task::spawn_blocking(move || {
        crate::store::sweep_temporary_files(&attachments, now, crate::store::SWEEP_GRACE)
    })
    .await
    .map_err(|e| crate::store::StoreError::Invalid(format!("attachment sweep stopped: {e}")))?;
    report.sweep.temporary += files;
    report.sweep.bytes_freed += bytes;
    report.sweep.errors += errors;
    Ok(report)
}

/// Image keeping in the background, every `quality.image_prune_interval_minutes` (none when
/// 0), the first pass at start-up: without it `quality.image_quota_bytes` would hold only as
/// often as someone runs `linesight images prune`. A failed pass is logged and tried again at
/// the next interval. [`ImageKeeping::stop`] lets a pass in progress finish.
pub(super) fn start_image_keeping(
    settings: &Settings,
    store: Store,
    metrics: Arc<crate::store::ImageKeepingMetrics>,
) -> Option<ImageKeeping> {
    let minutes = settings.quality.image_prune_interval_minutes;
    if minutes == 0 {
        tracing::info!(
            "Image keeping is off (quality.image_prune_interval_minutes = 0): run `linesight images prune` on a timer."
        );
        return None;
    }
    let settings = settings.clone();
    let every = Duration::from_secs(u64::from(minutes) * 60);
    let (stop, mut stopping) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let pass = prune_images_once(&settings, &store, false).await;
            metrics.observe(pass.as_ref().ok(), std::time::SystemTime::now());
            match pass {
                Ok(PruneReport {
                    retention: r,
                    sweep: s,
                }) => {
                    if r.expired + r.evicted + s.temporary + r.pinned + r.held_for_tasks > 0 {
                        tracing::info!(
                            expired = r.expired,
                            over_quota = r.evicted,
                            temporary = s.temporary,
                            bytes_freed = r.bytes_freed + s.bytes_freed,
                            kept_for_samples = r.pinned,
                            kept_for_samples_bytes = r.pinned_bytes,
                            kept_for_tasks = r.held_for_tasks,
                            kept_for_tasks_bytes = r.held_for_tasks_bytes,
                            "Image keeping pass."
                        );
                    }
                    if s.unrecorded > 0 {
                        tracing::warn!(
                            images = s.unrecorded,
                            bytes = s.unrecorded_bytes,
                            "Images no record names (their record failed); kept outside the quota: `linesight images prune --unrecorded` removes them."
                        );
                    }
                    if r.missing > 0 {
                        tracing::warn!(
                            missing = r.missing,
                            "Live image records without their file (deleted outside linesight, or held by another replica); marked deleted, the inspection records keep the reference."
                        );
                    }
                    if r.errors + s.errors > 0 {
                        tracing::warn!(
                            files = r.errors + s.errors,
                            "Image keeping could not list or remove some files (logged above); the next pass tries again."
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_minutes = minutes, "Image keeping failed; trying again at the next interval.");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    });
    Some(ImageKeeping { stop, task })
}

/// The background image keeping of a service.
pub(super) struct ImageKeeping {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ImageKeeping {
    /// Stops after the pass in progress, if any; a pass still running after `deadline` is
    /// abandoned (each image goes in a transaction of its own: the next pass finishes what
    /// it left).
    pub(super) async fn stop(mut self, deadline: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(deadline, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}
