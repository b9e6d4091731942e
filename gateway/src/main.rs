//! `viche`: the Viche server. Reads its configuration, opens the store,
//! starts the engine, serves HTTP and WebSocket until SIGTERM/SIGINT.
//! `viche admin …` instead calls a running server's admin API.

mod admin_cli;
mod config;
mod exporter;
mod http;
mod secret;
mod server;
mod web;
mod ws;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::store::mongo::{MongoStore, MongoWriteConcern};
use viche_engine::store::Store;
use viche_engine::Engine;

use crate::config::{Args, Command};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Command::Admin(admin)) = args.command.take() {
        return admin_cli::run(admin);
    }
    if let Err(line) = args.validate() {
        eprintln!("viche: {line}");
        return ExitCode::from(2);
    }
    init_logging(args.log_json);
    // With the `failpoints` feature (tests only), FAILPOINTS configures the
    // engine's failpoints for the life of the process.
    #[cfg(feature = "failpoints")]
    let _failpoints = {
        let scenario = fail::FailScenario::setup();
        if let Ok(spec) = std::env::var("FAILPOINTS") {
            tracing::warn!(%spec, "failpoints configured");
        }
        scenario
    };
    args.web_dir = args.resolved_web_dir();
    match &args.web_dir {
        Some(dir) => tracing::info!(web_dir = %dir.display(), "serving the web client"),
        None => tracing::warn!("no web client found (web/dist); serving a placeholder page at /"),
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(args.blocking_threads).build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viche: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viche: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Without a recorder (--no-metrics) every metric call is a no-op.
    let prometheus =
        if args.no_metrics { None } else { Some(exporter::install().context("installing the Prometheus recorder")?) };

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let store: Arc<dyn Store> = match &args.mongo_uri {
        Some(uri) => {
            let concern = MongoWriteConcern {
                w: args.mongo_write_concern.clone(),
                journal: args.mongo_journal,
                // The server gives up on the majority before the engine's
                // deadline on the call does, and says why.
                wtimeout: std::time::Duration::from_millis(args.store_timeout_ms * 4 / 5)
                    .max(std::time::Duration::from_millis(1)),
            };
            let store =
                MongoStore::connect(uri, &args.mongo_db, &concern).await.context("opening the MongoDB store")?;
            tracing::info!(db = %args.mongo_db, w = %concern.w, j = concern.journal, "using MongoDB");
            Arc::new(store)
        }
        None => Arc::new(
            EmbeddedStore::open_with_cache(&args.data_dir, args.store_cache_mib << 20)
                .with_context(|| format!("opening the embedded store in {}", args.data_dir.display()))?,
        ),
    };
    let secret = match &args.jwt_secret {
        Some(s) => s.clone().into_bytes(),
        None => secret::load_or_create(&args.data_dir)?,
    };
    if args.admin_token.as_deref().is_some_and(|token| token.as_bytes() == secret.as_slice()) {
        anyhow::bail!("--admin-token must not be the JWT secret");
    }
    let admin = args.admin_token.clone().map(|token| {
        let secret_file = args.jwt_secret.is_none().then(|| args.data_dir.join(secret::FILE_NAME));
        http::AdminAccess::new(token, secret_file)
    });
    if admin.is_some() {
        tracing::info!("the admin API is on (/api/admin/)");
    }
    let engine = Engine::start(args.engine_config(), store, &secret).await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %args.data_dir.display(), "viche listening on http://{}", listener.local_addr()?);

    let exporter = prometheus.map(|handle| exporter::Exporter::start(handle, engine.clone()));
    let origins = http::AllowedOrigins::parse(&args.allowed_origins).map_err(anyhow::Error::msg)?;
    let proxies = http::TrustedProxies::parse(&args.trusted_proxies).map_err(anyhow::Error::msg)?;
    let mut app = http::App::new(
        engine.clone(),
        exporter,
        args.web_dir.clone(),
        args.max_connections,
        origins,
        proxies,
        args.edge_limits(),
    );
    app.admin = admin;
    let app = Arc::new(app);
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => server::Stop::Signal,
            reason = engine.failed() => server::Stop::EngineFailed(reason),
        }
    };
    match server::serve(listener, app, stop).await {
        server::Stop::Signal => Ok(()),
        // Exit non-zero, so that an orchestrator restarts the process.
        server::Stop::EngineFailed(reason) => Err(anyhow::anyhow!("the engine failed: {reason}")),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
