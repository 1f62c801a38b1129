//! `rustspeed serve` as a client uses it: the binary started on a free port (`--port 0`, the address read from
//! its stdout), OpenAI completions requests over HTTP — plain and streamed, greedy text equal to `generate`'s,
//! many at once, every kind of bad request answered with OpenAI's error JSON — and a graceful SIGTERM.
#![cfg(target_os = "linux")] // signals through libc, a Linux-only dependency here

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// How long a test waits for the server to start, exit or log something before failing.
const PATIENCE: Duration = Duration::from_secs(120);

/// A running `rustspeed serve`, killed if the test ends without stopping it.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
    /// Kept open: the server's stdout stays writable.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(sb: &Sandbox, name: &str, args: &[&str]) -> Server {
        let log = sb.path(&format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_rustspeed"))
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(address) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!("no address announced: {line:?}; log: {}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        Server { base: address.to_string(), child, log, _stdout: stdout }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    fn wait_for_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(start.elapsed() < PATIENCE, "'{needle}' never logged: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < PATIENCE, "no exit after SIGTERM: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    // Error statuses are answers to check, not failures of the client.
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// A response: status, content type, body.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an OpenAI error of `status` whose message contains every needle; returns the error object.
    fn error(&self, status: u16, param: Option<&str>, needles: &[&str]) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.content_type, "application/json");
        let e = self.json()["error"].clone();
        assert!(e["type"].is_string() && e.get("code").is_some(), "{e}");
        assert_eq!(e["param"].as_str(), param, "{e}");
        let message = e["message"].as_str().unwrap();
        for n in needles {
            assert!(message.contains(n), "message lacks '{n}': {message}");
        }
        e
    }
}

fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("an HTTP response");
    let content_type = response.headers().get("content-type").map_or("", |v| v.to_str().unwrap()).to_string();
    let body = response.body_mut().read_to_string().unwrap();
    Reply { status: response.status().as_u16(), content_type, body }
}

fn post(server: &Server, path: &str, body: &str) -> Reply {
    reply(agent().post(&server.url(path)).header("content-type", "application/json").send(body))
}

fn get(server: &Server, path: &str) -> Reply {
    reply(agent().get(&server.url(path)).call())
}

/// A greedy completion's text, checked to be a whole, well-formed answer.
fn complete(server: &Server, prompt: &str, max_tokens: usize) -> String {
    let request = json!({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
    let r = post(server, "/v1/completions", &request.to_string());
    assert_eq!((r.status, r.content_type.as_str()), (200, "application/json"), "{}", r.body);
    let v = r.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], max_tokens, "{v}");
    choice["text"].as_str().unwrap().to_string()
}

/// The `data:` payloads of a server-sent event stream, up to and without `[DONE]`, which must end it.
fn events(stream: &str) -> Vec<Value> {
    let payloads: Vec<&str> = stream.split("\n\n").filter(|e| !e.is_empty()).collect();
    let (last, chunks) = payloads.split_last().expect("events");
    assert_eq!(*last, "data: [DONE]", "{stream}");
    chunks
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap_or_else(|| panic!("not data: {e}"))).unwrap())
        .collect()
}

fn train(sb: &Sandbox, model: &str) -> PathBuf {
    let data = sb.data();
    let config = sb.write("ds.json", CONFIG);
    let run = sb.path("run");
    let mut args = train_args(s(&config), s(&data), s(&run), "4");
    args[2] = model;
    ok(&rustspeed(&args));
    run
}

fn generate(run: &Path, prompt: &str, tokens: &str, extra: &[&str]) -> String {
    let args = ["generate", "--run", s(run), "--prompt", prompt, "--tokens", tokens, "--temperature", "0"];
    let out = rustspeed(&[&args[..], extra].concat());
    ok(&out);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_plain_streamed_concurrent_and_every_bad_request() {
    let sb = Sandbox::new("serve");
    let run = train(&sb, "gpt-tiny");
    let server = Server::start(&sb, "server", &["--run", s(&run), "--model-name", "tiny"]);

    assert_eq!(get(&server, "/health").json(), json!({"status": "ok"}));
    let models = get(&server, "/v1/models").json();
    assert_eq!((models["object"].as_str(), models["data"][0]["id"].as_str()), (Some("list"), Some("tiny")));
    assert_eq!(models["data"][0]["object"], "model");

    // A plain completion: OpenAI's shape, and the text `generate` gives for the same greedy request.
    let request = json!({"model": "tiny", "prompt": "the ", "max_tokens": 20, "temperature": 0});
    let r = post(&server, "/v1/completions", &request.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"), "{v}");
    assert_eq!((v["object"].as_str(), v["model"].as_str()), (Some("text_completion"), Some("tiny")));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(
        (choice["index"].as_u64(), &choice["logprobs"], choice["finish_reason"].as_str()),
        (Some(0), &Value::Null, Some("length"))
    );
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "completion_tokens": 20, "total_tokens": 24}));
    let text = choice["text"].as_str().unwrap().to_string();
    assert_eq!(text.chars().count(), 20, "char tokenizer: a token is a character");
    assert_eq!(generate(&run, "the ", "20", &[]), format!("the {text}\n"), "serve and generate differ");

    // Streamed: the same text in chunks, the finish reason on the last, then [DONE].
    let streamed = json!({"prompt": "the ", "max_tokens": 20, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}});
    let r = post(&server, "/v1/completions", &streamed.to_string());
    assert_eq!((r.status, r.content_type.as_str()), (200, "text/event-stream"), "{}", r.body);
    let chunks = events(&r.body);
    let (usage, chunks) = chunks.split_last().unwrap();
    assert_eq!(
        (usage["choices"].as_array().map(Vec::len), &usage["usage"]["completion_tokens"]),
        (Some(0), &json!(20))
    );
    let (last, texts) = chunks.split_last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(texts.iter().all(|c| c["choices"][0]["finish_reason"].is_null() && c["object"] == "text_completion"));
    let joined: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(joined, text);

    // A stop string ends the text before it, in both commands.
    let stop: String = text.chars().skip(5).take(2).collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let request = json!({"prompt": "the ", "max_tokens": 20, "temperature": 0, "stop": [stop]});
    let v = post(&server, "/v1/completions", &request.to_string()).json();
    assert_eq!(
        (v["choices"][0]["text"].as_str(), v["choices"][0]["finish_reason"].as_str()),
        (Some(cut), Some("stop"))
    );
    assert_eq!(generate(&run, "the ", "20", &["--stop", &stop]), format!("the {cut}\n"));

    // 16 requests at once (different prompts and lengths) are decoded together and each gets its own text.
    let prompts = ["the ", "to be", "a lazy ", "quick"];
    let expected: Vec<String> = prompts.iter().map(|p| complete(&server, p, 40)).collect();
    let barrier = Arc::new(Barrier::new(16));
    let server = Arc::new(server);
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (server, barrier) = (server.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                complete(&server, prompts[i % 4], 20 + i)
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let text = t.join().unwrap();
        let want: String = expected[i % 4].chars().take(20 + i).collect();
        assert_eq!(text, want, "request {i} ({:?})", prompts[i % 4]);
    }
    let mut server = Arc::into_inner(server).unwrap();

    // Bad requests: the right status and an OpenAI error naming the problem; none takes the server down.
    let completions = |body: &str| post(&server, "/v1/completions", body);
    completions(r#"{"prompt": "the", "max_tokens": 5"#).error(400, None, &["not valid JSON"]);
    completions(r#"{"prompt": "the", "max_tokens": "5"}"#).error(400, Some("max_tokens"), &["max_tokens", "integer"]);
    completions(r#"{"prompt": "the", "n": 2}"#).error(400, Some("n"), &["n: 2 is not supported"]);
    completions(r#"{"prompt": "the", "temperature": -1}"#).error(400, Some("temperature"), &["between 0 and 2"]);
    completions(r#"{"prompt": "the", "max_tokens": 65}"#).error(400, Some("max_tokens"), &["between 1 and 64"]);
    completions(r#"{"prompt": "Zebra"}"#).error(400, Some("prompt"), &["cannot be encoded", "Z"]);
    completions(r#"{"prompt": ["the", "a"]}"#).error(400, Some("prompt"), &["several prompts"]);
    let e = completions(r#"{"model": "gpt-4", "prompt": "the"}"#).error(404, Some("model"), &["gpt-4", "tiny"]);
    assert_eq!(e["code"], "model_not_found");
    let long = "the quick brown fox ".repeat(4);
    let body = json!({"prompt": long}).to_string();
    let e = completions(&body).error(400, Some("prompt"), &["80 tokens", "limit of 63", "context is 64"]);
    assert_eq!(e["code"], "context_length_exceeded");
    get(&server, "/v1/nothing").error(404, None, &["unknown route", "/v1/nothing"]);
    get(&server, "/v1/completions").error(405, None, &["GET", "POST"]);
    assert_eq!(raw_request(&server, "POST /v1/completions HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"), 413);
    assert_eq!(get(&server, "/health").json(), json!({"status": "ok"}), "alive after the bad requests");

    let log = server.log();
    assert!(
        log.contains("4 prompt tokens, 20 completion tokens, first token") && log.contains("finish length"),
        "{log}"
    );
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("SIGTERM: shutting down"), "{}", server.log());
}

/// Sends `head` (a request line and headers) as is; returns the response's status.
fn raw_request(server: &Server, head: &str) -> u16 {
    let mut stream = TcpStream::connect(server.base.strip_prefix("http://").unwrap()).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = BufReader::new(stream).take(4096).read_line(&mut response);
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {response:?}"))
}

/// An LSTM (no context, so long outputs): a full server answers 429, a client that disconnects has its
/// request cancelled, and a request in flight at SIGTERM runs to its end before the server exits 0.
#[test]
fn busy_server_cancelled_request_and_graceful_shutdown() {
    let sb = Sandbox::new("serve-lstm");
    let run = train(&sb, "lstm-tiny");
    let args = ["--run", s(&run), "--max-concurrent", "1", "--max-tokens-limit", "1000000"];
    let mut server = Server::start(&sb, "server", &args);
    // Greedy: a sampled end-of-text token could end a request early.
    let endless = json!({"prompt": "the ", "max_tokens": 1_000_000, "temperature": 0, "stream": true}).to_string();

    // One long stream takes the only place; the next request is told to come back.
    let mut response = agent().post(&server.url("/v1/completions")).send(endless.as_str()).unwrap();
    let mut reader = BufReader::new(response.body_mut().as_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: {"), "{first}");
    let busy = post(&server, "/v1/completions", r#"{"prompt": "the "}"#);
    busy.error(429, None, &["busy", "--max-concurrent"]);

    // The client leaves: its request is cancelled and the place freed.
    drop(reader);
    drop(response);
    let log = server.wait_for_log("finish cancelled");
    assert!(!log.contains("1000000 completion tokens"), "{log}");
    let start = Instant::now();
    let text = loop {
        let r = post(&server, "/v1/completions", r#"{"prompt": "the ", "max_tokens": 5, "temperature": 0}"#);
        match r.status {
            200 => break r.json()["choices"][0]["text"].as_str().unwrap().to_string(),
            429 if start.elapsed() < PATIENCE => std::thread::sleep(Duration::from_millis(20)),
            _ => panic!("{}: {}", r.status, r.body),
        }
    };
    assert_eq!(text.chars().count(), 5);

    // SIGTERM while a stream is in flight: it is decoded to its end, then the server exits 0.
    let request = json!({"prompt": "the ", "max_tokens": 3000, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}});
    let mut response = agent().post(&server.url("/v1/completions")).send(request.to_string().as_str()).unwrap();
    let mut reader = BufReader::new(response.body_mut().as_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let chunks = events(&format!("{first}{rest}"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3000);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

#[test]
fn serve_flags() {
    let help = ok(&rustspeed(&["serve", "--help"]));
    for flag in ["--run", "--init-from", "--host", "--port", "--max-concurrent", "--max-prompt-tokens", "--model-name"]
    {
        assert!(help.contains(flag), "{flag} missing from: {help}");
    }
    // The address is taken before the model is loaded: a port in use fails at once, naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    fails(&rustspeed(&["serve", "--run", "nowhere", "--port", &port]), &["cannot listen", &port, "in use"]);
    fails(&rustspeed(&["serve", "--run", "nowhere", "--port", "70000"]), &["--port 70000"]);
    fails(&rustspeed(&["serve", "--run", "nowhere", "--max-concurrent", "0"]), &["--max-concurrent 0", "between 1"]);
    fails(&rustspeed(&["serve", "--port", "0"]), &["--run", "--init-from"]);
}
