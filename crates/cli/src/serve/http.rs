//! The HTTP side: routes, the completions handler (parse, tokenize, admit, hand to the inference thread, relay
//! its text as one JSON response or as server-sent events), and errors in OpenAI's JSON shape for everything
//! that goes wrong, unknown routes and wrong methods included.

use super::api::{self, ApiError, Completion, Header, Limits, Prompt, Usage};
use super::worker::{Event, Submission};
use crate::generate::end_of_text_token;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body::Frame;
use rustspeed_data::Tokenizer;
use rustspeed_engine::generate::FinishReason;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Largest request body: a completions request is a prompt and a few numbers; 1 MiB holds a prompt far past any
/// context here, and bounds what one request can make the server buffer.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// What a client is told to wait before retrying when the server is full.
const RETRY_AFTER_SECONDS: &str = "1";

/// What every handler shares.
pub struct AppState {
    pub model_name: String,
    /// When the server started: the model's `created`.
    pub created: u64,
    pub tokenizer: Arc<Tokenizer>,
    pub limits: Limits,
    /// Longest prompt, in tokens.
    pub max_prompt_tokens: usize,
    pub context: Option<usize>,
    /// Requests admitted and not finished, at most `max_concurrent`.
    pub in_flight: AtomicUsize,
    pub max_concurrent: usize,
    pub submit: mpsc::Sender<Submission>,
    pub worker_alive: Arc<AtomicBool>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions).fallback(|m: Method, u: Uri| wrong_method(m, u, "POST")))
        .route("/v1/models", get(models).fallback(|m: Method, u: Uri| wrong_method(m, u, "GET")))
        .route("/health", get(health).fallback(|m: Method, u: Uri| wrong_method(m, u, "GET")))
        .fallback(not_found)
        .with_state(state)
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_json())
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let message = format!(
        "unknown route: {method} {}; this server has POST /v1/completions, GET /v1/models, GET /health",
        uri.path()
    );
    error_response(&ApiError::new(404, "invalid_request_error", "unknown_url", message))
}

async fn wrong_method(method: Method, uri: Uri, allowed: &'static str) -> Response {
    let message = format!("{method} is not allowed on {}; use {allowed}", uri.path());
    let mut response = error_response(&ApiError::new(405, "invalid_request_error", "method_not_allowed", message));
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.worker_alive.load(Ordering::SeqCst) {
        true => json_response(StatusCode::OK, &json!({"status": "ok"})),
        false => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "error", "message": "the inference thread has stopped"}),
        ),
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &api::models_json(&state.model_name, state.created))
}

/// A place among the `--max-concurrent` requests, given back when the request ends (its response written, or
/// its client gone).
struct Slot(Arc<AppState>);

impl Slot {
    fn take(state: &Arc<AppState>) -> Option<Slot> {
        let max = state.max_concurrent;
        let taken = state.in_flight.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1));
        taken.ok().map(|_| Slot(state.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let received = Instant::now();
    match start(&state, request, received).await {
        Ok(response) => response,
        Err(e) => error_response(&e),
    }
}

/// Checks a request, hands it to the inference thread and answers it.
async fn start(state: &Arc<AppState>, request: Request, received: Instant) -> Result<Response, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("the request body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    // A read error is a body over the limit or a client gone mid-body; to the latter no answer arrives anyway.
    let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await.map_err(|_| too_large())?;
    let Completion { prompt, mut sampling, stop, stream, include_usage } = api::parse_completion(&body, &state.limits)?;
    let prompt = match prompt {
        Prompt::Tokens(ids) => ids,
        Prompt::Text(text) => state.tokenizer.encode(&text).map_err(|e| {
            ApiError::invalid("prompt", format!("prompt: cannot be encoded with the model's tokenizer: {e}"))
        })?,
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt: encodes to no tokens; give at least one"));
    }
    if prompt.len() > state.max_prompt_tokens {
        let context = state.context.map_or(String::new(), |c| format!("; the model's context is {c} tokens"));
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "prompt: {} tokens, over this server's limit of {} prompt tokens{context}",
                prompt.len(),
                state.max_prompt_tokens
            ),
        )
        .with_code("context_length_exceeded"));
    }
    sampling.stop_tokens = end_of_text_token(&state.tokenizer).into_iter().collect();

    let Some(slot) = Slot::take(state) else {
        let message = format!(
            "the server is busy: {} requests are in progress, its limit (--max-concurrent); retry shortly",
            state.max_concurrent
        );
        let mut response = error_response(&ApiError::new(429, "server_busy", "server_busy", message));
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        return Ok(response);
    };
    let unavailable =
        || ApiError::new(503, "server_error", "worker_stopped", "the inference thread has stopped; restart the server");
    if !state.worker_alive.load(Ordering::SeqCst) {
        return Err(unavailable());
    }
    let id = api::completion_id();
    let prompt_tokens = prompt.len();
    let (events, mut rx) = unbounded_channel();
    let submission = Submission { id: id.clone(), prompt, sampling, stop, events, received };
    state.submit.send(submission).map_err(|_| unavailable())?;
    let created = api::unix_time();

    if stream {
        let body = EventStream {
            rx,
            id,
            created,
            model: state.model_name.clone(),
            include_usage,
            pending: None,
            done: false,
            _slot: slot,
        };
        let headers = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
        return Ok((headers, Body::new(body)).into_response());
    }
    let mut text = String::new();
    let header = Header { id: &id, created, model: &state.model_name };
    loop {
        match rx.recv().await {
            Some(Event::Text(piece)) => text.push_str(&piece),
            Some(Event::Done(finish, usage)) => {
                return Ok(json_response(StatusCode::OK, &api::completion_json(&header, &text, finish, usage)))
            }
            Some(Event::Failed(e)) => return Err(e),
            None => return Err(stopped_midway(prompt_tokens)),
        }
    }
}

/// A request whose channel closed without an end: the inference thread stopped.
fn stopped_midway(prompt_tokens: usize) -> ApiError {
    let message = format!("the inference thread stopped during the request (prompt of {prompt_tokens} tokens)");
    ApiError::new(500, "server_error", "worker_stopped", message)
}

/// A streamed response's body: server-sent events, one `data:` chunk per batch of new text (whatever arrived
/// since the last poll), then a chunk with the finish reason, the usage chunk if asked for, and `data: [DONE]`.
/// Dropping it (the client disconnected) drops the receiver, which cancels the request.
struct EventStream {
    rx: UnboundedReceiver<Event>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// An end that arrived behind text, sent as the next frame.
    pending: Option<Event>,
    done: bool,
    _slot: Slot,
}

impl EventStream {
    fn header(&self) -> Header<'_> {
        Header { id: &self.id, created: self.created, model: &self.model }
    }

    fn data(value: &Value) -> String {
        format!("data: {value}\n\n")
    }

    fn end(&mut self, finish: FinishReason, usage: Usage) -> String {
        self.done = true;
        let mut out = Self::data(&api::chunk_json(&self.header(), "", Some(finish)));
        if self.include_usage {
            out.push_str(&Self::data(&api::usage_chunk_json(&self.header(), usage)));
        }
        out + "data: [DONE]\n\n"
    }

    /// An error in the middle of a stream: OpenAI's error object as an event, then the end.
    fn fail(&mut self, e: &ApiError) -> String {
        self.done = true;
        Self::data(&e.to_json()) + "data: [DONE]\n\n"
    }

    fn frame(&mut self, event: Option<Event>) -> String {
        match event {
            Some(Event::Text(mut text)) => {
                // Everything already waiting goes out in one chunk.
                loop {
                    match self.rx.try_recv() {
                        Ok(Event::Text(more)) => text.push_str(&more),
                        Ok(other) => {
                            self.pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                Self::data(&api::chunk_json(&self.header(), &text, None))
            }
            Some(Event::Done(finish, usage)) => self.end(finish, usage),
            Some(Event::Failed(e)) => self.fail(&e),
            None => self.fail(&stopped_midway(0)),
        }
    }
}

impl http_body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let event = match this.pending.take() {
            Some(event) => Some(event),
            None => match this.rx.poll_recv(cx) {
                Poll::Ready(event) => event,
                Poll::Pending => return Poll::Pending,
            },
        };
        let text = this.frame(event);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
