//! The inference thread: it owns the model (one, not shared between threads) in a [`Batcher`] and decodes every
//! request together, continuously batched — new requests join between steps (their prompts processed then), each
//! step draws one token for every active request, finished ones leave. Each request's text goes back on its own
//! channel as it is produced; a request whose receiver is gone (the client disconnected) is cancelled.

use super::api::{ApiError, Usage};
use crate::generate::TextStream;
use rustspeed_data::Tokenizer;
use rustspeed_engine::generate::{Batcher, FinishReason, SamplingParams, SeqId, Strategy};
use rustspeed_nn::ModelConfig;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// A request for the inference thread.
pub struct Submission {
    /// The completion id, for the log.
    pub id: String,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub events: UnboundedSender<Event>,
    /// When the request arrived, for the time to first token.
    pub received: Instant,
}

/// What the inference thread tells a request.
#[derive(Debug)]
pub enum Event {
    /// More text.
    Text(String),
    /// The end: the text so far is all.
    Done(FinishReason, Usage),
    /// The request failed (the model's error); nothing more comes.
    Failed(ApiError),
}

/// The running inference thread.
pub struct Worker {
    pub submit: mpsc::Sender<Submission>,
    /// False once the thread has stopped (a panic in the model): the server then answers 503.
    pub alive: Arc<AtomicBool>,
    pub thread: JoinHandle<()>,
}

/// Starts the inference thread with a model of `config` and its `params`, decoding up to `capacity` requests
/// at once; returns once the model is built (or failed to be).
pub fn spawn(
    config: ModelConfig,
    params: Vec<f32>,
    tokenizer: Arc<Tokenizer>,
    capacity: usize,
) -> Result<Worker, String> {
    let (submit, requests) = mpsc::channel::<Submission>();
    let (ready_tx, ready) = mpsc::sync_channel::<Result<(), String>>(1);
    let alive = Arc::new(AtomicBool::new(true));
    let flag = alive.clone();
    let thread = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            // The model is built on this thread, which alone uses it.
            let built = config
                .build()
                .map_err(|e| e.to_string())
                .and_then(|model| Batcher::new(model, params, capacity, Strategy::Cached).map_err(|e| e.to_string()));
            let batcher = match built {
                Ok(batcher) => {
                    let _ = ready_tx.send(Ok(()));
                    batcher
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // A panic must not leave the server accepting requests nobody serves: it is marked dead, and the
            // channels of the requests in flight close, which their handlers report as errors.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Decoder { batcher, tokenizer, live: HashMap::new(), queue: VecDeque::new() }.run(requests)
            }));
            flag.store(false, Ordering::SeqCst);
            if outcome.is_err() {
                eprintln!("error: the inference thread stopped after a panic; requests are refused from now on");
            }
        })
        .map_err(|e| format!("cannot start the inference thread: {e}"))?;
    match ready.recv() {
        Ok(Ok(())) => Ok(Worker { submit, alive, thread }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the inference thread stopped while loading the model".into()),
    }
}

/// A request being decoded.
struct Live {
    sub: Submission,
    stream: TextStream,
    admitted: Instant,
    first_token: Option<Instant>,
    tokens: usize,
}

struct Decoder {
    batcher: Batcher,
    tokenizer: Arc<Tokenizer>,
    live: HashMap<SeqId, Live>,
    /// Requests waiting for a free place (the HTTP side admits no more than the capacity, but a cancelled
    /// request's place is freed here only at the next step).
    queue: VecDeque<Submission>,
}

impl Decoder {
    /// Serves until the channel closes (the server is shutting down) and the last request has finished.
    fn run(mut self, requests: mpsc::Receiver<Submission>) {
        let mut open = true;
        loop {
            if self.live.is_empty() && self.queue.is_empty() {
                // Nothing to do: wait for a request.
                match requests.recv() {
                    Ok(sub) => self.queue.push_back(sub),
                    Err(_) => return,
                }
            }
            while open {
                match requests.try_recv() {
                    Ok(sub) => self.queue.push_back(sub),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            self.admit();
            if !self.live.is_empty() {
                self.step();
            } else if !open && self.queue.is_empty() {
                return;
            }
        }
    }

    /// Prefills waiting requests while there is room.
    fn admit(&mut self) {
        while self.batcher.active() < self.batcher.capacity() {
            let Some(sub) = self.queue.pop_front() else { return };
            if sub.events.is_closed() {
                continue; // the client left while the request waited
            }
            match self.batcher.add(&sub.prompt, sub.sampling.clone()) {
                Ok(id) => {
                    let stream = TextStream::new(&sub.prompt, sub.stop.clone());
                    let live = Live { sub, stream, admitted: Instant::now(), first_token: None, tokens: 0 };
                    self.live.insert(id, live);
                }
                Err(e) => {
                    let _ = sub.events.send(Event::Failed(ApiError::invalid("prompt", e.to_string())));
                }
            }
        }
    }

    /// One token for every live request, each sent on (or the request ended).
    fn step(&mut self) {
        // Clients that left since the last step free their places before it is computed.
        let gone: Vec<SeqId> = self.live.iter().filter(|(_, l)| l.sub.events.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.end(id, None);
        }
        if self.live.is_empty() {
            return;
        }
        let emitted = match self.batcher.step() {
            Ok(emitted) => emitted,
            Err(e) => {
                // The model failed: every request in flight is told, and their places freed.
                let message = format!("the model failed: {e}");
                eprintln!("error: {message}");
                let ids: Vec<SeqId> = self.live.keys().copied().collect();
                for id in ids {
                    if let Some(live) = self.live.get(&id) {
                        let _ = live.sub.events.send(Event::Failed(ApiError::new(
                            500,
                            "server_error",
                            "model_error",
                            message.clone(),
                        )));
                    }
                    self.end(id, None);
                }
                return;
            }
        };
        let now = Instant::now();
        for e in emitted {
            let Some(live) = self.live.get_mut(&e.id) else { continue };
            let mut text = String::new();
            if let Some(token) = e.token {
                live.tokens += 1;
                live.first_token.get_or_insert(now);
                match live.stream.push(&self.tokenizer, token) {
                    Ok(piece) => text = piece,
                    Err(message) => {
                        let _ = live.sub.events.send(Event::Failed(ApiError::new(
                            500,
                            "server_error",
                            "decode_error",
                            message,
                        )));
                        self.end(e.id, None);
                        continue;
                    }
                }
            }
            let finish = if live.stream.stopped() { Some(FinishReason::Stop) } else { e.finish };
            if finish.is_some() {
                match live.stream.finish(&self.tokenizer) {
                    Ok(rest) => text.push_str(&rest),
                    Err(message) => eprintln!("warning: {}: {message}", live.sub.id),
                }
            }
            if !text.is_empty() && live.sub.events.send(Event::Text(text)).is_err() {
                self.end(e.id, None);
                continue;
            }
            if let Some(finish) = finish {
                self.end(e.id, Some(finish));
            }
        }
    }

    /// Ends a request: frees its place (whether or not the batcher ended it already), tells its client how it
    /// ended (`None`: cancelled, nobody listening), and logs it.
    fn end(&mut self, id: SeqId, finish: Option<FinishReason>) {
        self.batcher.cancel(id);
        let Some(live) = self.live.remove(&id) else { return };
        let usage = Usage { prompt_tokens: live.sub.prompt.len(), completion_tokens: live.tokens };
        if let Some(finish) = finish {
            // The client may have left just now; then nobody reads this.
            let _ = live.sub.events.send(Event::Done(finish, usage));
        }
        let end = Instant::now();
        let ttft = live
            .first_token
            .map_or("-".to_string(), |t| format!("{:.0} ms", (t - live.sub.received).as_secs_f64() * 1e3));
        let rate = match (live.first_token, live.tokens) {
            (Some(first), n) if n > 1 && end > first => format!("{:.1}", (n - 1) as f64 / (end - first).as_secs_f64()),
            _ => "-".to_string(),
        };
        let how = match finish {
            Some(FinishReason::Window) => "length (context full)",
            Some(f) => f.openai_name(),
            None => "cancelled",
        };
        eprintln!(
            "{}: {} prompt tokens, {} completion tokens, first token {ttft} (queued {:.0} ms), {rate} tokens/s, finish {how}",
            live.sub.id,
            usage.prompt_tokens,
            usage.completion_tokens,
            (live.admitted - live.sub.received).as_secs_f64() * 1e3,
        );
    }
}
