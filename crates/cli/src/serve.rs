//! `rustspeed serve`: an HTTP server with OpenAI's completions API (`POST /v1/completions`, streamed or not;
//! `GET /v1/models`; `GET /health`) over one model, decoding all requests together on one inference thread
//! (continuous batching).
//!
//! - `api`: the request's fields and their checks, and the JSON of responses and errors;
//! - `worker`: the inference thread, which owns the model;
//! - `http`: routes and handlers (axum on tokio, HTTP/1 only).
//!
//! Over `--max-concurrent` requests in flight, a request is answered 429 with `Retry-After: 1` (as TGI answers
//! when full) rather than queued without bound. SIGINT or SIGTERM: no new connections, the requests in flight
//! finish (for up to [`SHUTDOWN_GRACE`]), exit 0.

mod api;
mod http;
mod worker;

use crate::args::{opt, parse, Opt};
use crate::generate::{load, Loaded, MAX_GENERATED_TOKENS};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

const OPTS: &[Opt] = &[
    opt("run", "RUN_DIR", "serve a run's latest checkpoint (or --tag) with its tokenizer"),
    opt("tag", "TAG", "checkpoint tag of --run (default: latest)"),
    opt("init-from", "PATH", "serve Hugging Face weights: a model directory with tokenizer.json"),
    opt("model", "PRESET|config.json", "the model of --init-from weights without a config.json"),
    opt("host", "ADDR", "address to listen on (default 127.0.0.1: this machine only)"),
    opt("port", "PORT", "port to listen on, 0 = any free one (default 8000)"),
    opt("max-concurrent", "N", "requests decoded at once; more are answered 429 (default 16)"),
    opt("max-prompt-tokens", "N", "longest prompt (default: the model's context - 1)"),
    opt("max-tokens-limit", "N", "largest max_tokens a request may ask for (default: the model's context)"),
    opt("model-name", "NAME", "the model's name in the API (default: the run's or model directory's name)"),
];

const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 8000;
const DEFAULT_MAX_CONCURRENT: usize = 16;
/// Most requests decoded at once: each holds a key/value cache of the whole context, allocated at start.
const MAX_CONCURRENT: usize = 1024;
/// Without a context (the LSTM) nothing bounds a prompt or an output; a prompt is processed on the inference
/// thread while every other request waits, and an output holds its place until done, so both get a bound.
const PROMPT_LIMIT_WITHOUT_CONTEXT: usize = 8192;
const OUTPUT_LIMIT_WITHOUT_CONTEXT: usize = 8192;
/// How long the requests in flight may take to finish once a shutdown signal arrived.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Threads for the HTTP side: it only parses JSON and relays text; the cores belong to the model's kernels.
const HTTP_THREADS: usize = 2;

pub fn run(argv: &[String]) -> Result<(), String> {
    let Some(a) = parse("serve", OPTS, argv)? else { return Ok(()) };
    let e = |e: crate::args::ArgError| e.to_string();
    let host = a.get("host").unwrap_or(DEFAULT_HOST).to_string();
    let port: u16 = a.parsed("port", DEFAULT_PORT).map_err(e)?;
    let max_concurrent = a.parsed_in("max-concurrent", DEFAULT_MAX_CONCURRENT, 1..=MAX_CONCURRENT).map_err(e)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(HTTP_THREADS)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    // Signals are caught from here on (before the address is announced), so a SIGTERM at any point after
    // "listening" is a graceful shutdown.
    let signals = runtime.block_on(async { Signals::new() })?;
    // The address first: a port in use fails before a large model is loaded.
    let listener = runtime.block_on(tokio::net::TcpListener::bind((host.as_str(), port))).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => " (another server is running there; choose another --port)",
            std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges; choose another --port)",
            _ => "",
        };
        format!("cannot listen on {host}:{port}: {e}{hint}")
    })?;
    let address = listener.local_addr().map_err(|e| format!("the listening socket: {e}"))?;

    let Loaded { spec, params, tokenizer, source } = load(&a)?;
    let context = spec.config.context_length();
    let max_prompt_tokens = match context {
        Some(context) => a.parsed_in("max-prompt-tokens", context - 1, 1..=context - 1).map_err(e)?,
        None => a.parsed_in("max-prompt-tokens", PROMPT_LIMIT_WITHOUT_CONTEXT, 1..=usize::MAX).map_err(e)?,
    };
    let max_tokens = match context {
        Some(context) => a.parsed_in("max-tokens-limit", context, 1..=context).map_err(e)?,
        None => a.parsed_in("max-tokens-limit", OUTPUT_LIMIT_WITHOUT_CONTEXT, 1..=MAX_GENERATED_TOKENS).map_err(e)?,
    };
    let model_name = match a.get("model-name") {
        Some("") => return Err("--model-name: give a non-empty name".into()),
        Some(name) => name.to_string(),
        None => default_name(&source),
    };
    let vocab_size = spec.config.vocab_size();
    let tokenizer = Arc::new(tokenizer);
    let worker = worker::spawn(spec.config, params, tokenizer.clone(), max_concurrent)?;

    let state = Arc::new(http::AppState {
        model_name: model_name.clone(),
        created: api::unix_time(),
        tokenizer,
        limits: api::Limits { model_name: model_name.clone(), max_tokens, vocab_size },
        max_prompt_tokens,
        context,
        in_flight: AtomicUsize::new(0),
        max_concurrent,
        submit: worker.submit.clone(),
        worker_alive: worker.alive.clone(),
    });
    let app = http::router(state.clone());
    let context_note = context.map_or("no context limit".to_string(), |c| format!("context {c}"));
    eprintln!(
        "serving {model_name} ({}, {context_note}; prompts up to {max_prompt_tokens} tokens, max_tokens up to {max_tokens}; {max_concurrent} requests at once)",
        spec.preset
    );
    // The address on stdout, alone on its line, for whoever started the server (with --port 0, the only way to
    // learn it).
    println!("listening on http://{address}");
    std::io::stdout().flush().map_err(|e| format!("stdout: {e}"))?;

    let served = runtime.block_on(serve(listener, app, signals, state.clone(), address));
    // Everything that could submit is gone once the server is; the thread finishes what it has and exits.
    drop(state);
    let worker::Worker { submit, thread, .. } = worker;
    drop(submit);
    if served? {
        let _ = thread.join();
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("stopped");
    Ok(())
}

/// A run or model directory's own name (`runs/shakespeare/` → `shakespeare`).
fn default_name(source: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(source).or_else(|| named(&source.canonicalize().ok()?)).unwrap_or_else(|| "rustspeed".into())
}

/// Serves until a signal, then waits for the requests in flight up to [`SHUTDOWN_GRACE`]; returns whether they
/// all finished.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    signals: Signals,
    state: Arc<http::AppState>,
    address: SocketAddr,
) -> Result<bool, String> {
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let name = signals.wait().await;
        let in_flight = state.in_flight.load(std::sync::atomic::Ordering::SeqCst);
        eprintln!(
            "{name}: shutting down; no new connections on {address}, waiting up to {}s for {in_flight} requests in flight",
            SHUTDOWN_GRACE.as_secs()
        );
        let _ = signalled_tx.send(true);
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let deadline = async move {
        if signalled.wait_for(|&s| s).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.map(|()| true).map_err(|e| format!("the server failed: {e}")),
        () = deadline => {
            eprintln!("requests still in flight after {}s; exiting without them", SHUTDOWN_GRACE.as_secs());
            Ok(false)
        }
    }
}

/// SIGINT and SIGTERM, caught from creation on.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let catch = |kind: SignalKind| signal(kind).map_err(|e| format!("cannot catch signals: {e}"));
            Ok(Signals { interrupt: catch(SignalKind::interrupt())?, terminate: catch(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the first signal; returns its name.
    async fn wait(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
