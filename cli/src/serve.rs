//! `embodios serve`: the Ollama- and OpenAI-compatible HTTP API (crate `embodios-api`)
//! over std sockets on Linux, with the engine as its backend.
//!
//! Threads: one accept loop, one thread per connection (at most [`MAX_CONNECTIONS`]),
//! and one inference thread that owns every model and runs one generation at a time.
//! Connection threads hand generations to it through a bounded FIFO queue
//! (`--queue`, default 16 waiting requests); when the queue is full the request gets
//! 503 at once. A client must send a whole request within [`REQUEST_TIMEOUT`] of its
//! first byte (else 408); idle keep-alive connections close after [`IDLE_TIMEOUT`].

use crate::loaded::{self, Detok, Loaded};
use embodios_api::{
    Api, Backend, BackendError, Config, Connection, Env, Event, GenRequest, GenResult, Job, JobEnd,
    ModelInfo, Output, TokenSink,
};
use embodios_engine::{
    generate::GenerateError, ChatTemplate, Generator, Sampler, SamplerConfig, Session,
};
use embodios_host::{Clock, StdClock, ThreadPool};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Ollama's default port, so clients find the server without configuration.
const DEFAULT_PORT: u16 = 11434;
/// Requests that may wait for the inference slot.
const DEFAULT_QUEUE: usize = 16;
/// Open connections beyond which new ones get 503 and are closed.
const MAX_CONNECTIONS: u64 = 128;
/// Time from a request's first byte to its last.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an idle keep-alive connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a send may block (a client that stops reading must not hold the slot forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: embodios serve -m FILE [-m FILE...] [--port N] [--host ADDR] \
[--api-key KEY] [--threads N] [--ctx N] [--queue N]";

struct Options {
    models: Vec<String>,
    host: String,
    port: u16,
    api_key: Option<String>,
    threads: Option<usize>,
    context: Option<usize>,
    queue: usize,
}

/// Parses the flags by hand: `-m` may repeat, which the shared parser does not allow.
fn parse_options(raw: &[String]) -> Result<Options, String> {
    let mut o = Options {
        models: Vec::new(),
        host: "127.0.0.1".into(),
        port: DEFAULT_PORT,
        api_key: None,
        threads: None,
        context: None,
        queue: DEFAULT_QUEUE,
    };
    let mut it = raw.iter();
    while let Some(word) = it.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (word.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        fn number<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("invalid value `{v}` for {flag}"))
        }
        match flag {
            "-m" | "--model" => o.models.push(value()?),
            "--host" => o.host = value()?,
            "--port" => o.port = number(flag, value()?)?,
            "--api-key" => o.api_key = Some(value()?),
            "-t" | "--threads" => o.threads = Some(number(flag, value()?)?),
            "-c" | "--ctx" => o.context = Some(number(flag, value()?)?),
            "--queue" => o.queue = number(flag, value()?)?,
            _ => return Err(format!("unknown option `{word}`\n{USAGE}")),
        }
    }
    if o.models.is_empty() {
        return Err(format!("missing required option --model\n{USAGE}"));
    }
    if o.threads == Some(0) {
        return Err("--threads must be at least 1".into());
    }
    if o.api_key.as_deref() == Some("") {
        return Err("--api-key must not be empty".into());
    }
    Ok(o)
}

/// One served model: the engine objects plus a session whose KV cache is reused when the
/// next prompt shares a prefix with the last one.
struct Served {
    info: ModelInfo,
    loaded: Loaded<'static>,
    template: Result<ChatTemplate, String>,
    session: Session,
}

/// The engine behind the API; lives on the inference thread.
struct EngineBackend {
    models: Vec<Served>,
    pool: ThreadPool,
    clock: StdClock,
}

/// `general.file_type` as llama.cpp names it (its `llama_ftype` values).
fn file_type_name(ft: u32) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// FNV-1a over the file's header (metadata and tensor table) and its length: a cheap,
/// stable identifier for `digest` (not a hash of the weights).
fn digest(bytes: &[u8], data_offset: u64) -> String {
    let head = &bytes[..(data_offset as usize).min(bytes.len())];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in head.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn load(path: &str, context: Option<usize>) -> Result<Served, String> {
    // Weights are borrowed from the file bytes for the whole life of the server.
    let bytes: &'static [u8] = Box::leak(loaded::read_file(path)?.into_boxed_slice());
    let loaded = Loaded::new(path, bytes, context)?;
    let file = &loaded.file;
    let stem = Path::new(path)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(path)
        .to_string();
    let mut aliases = Vec::new();
    if let Some(name) = file.get_str("general.name") {
        aliases.push(name.to_string());
    }
    let quantization = file
        .get_u32("general.file_type")
        .and_then(file_type_name)
        .map(str::to_string)
        .unwrap_or_default();
    let session = loaded.model.new_session();
    let info = ModelInfo {
        name: stem,
        aliases,
        family: file.architecture().unwrap_or("unknown").to_string(),
        parameter_count: file.tensors.iter().map(|t| t.n_elements()).sum(),
        quantization,
        size_bytes: bytes.len() as u64,
        context_length: session.capacity() as u64,
        digest: digest(bytes, file.data_offset),
        template: file
            .get_str("tokenizer.chat_template")
            .unwrap_or_default()
            .to_string(),
        modified_unix_s: std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs()),
    };
    let template = ChatTemplate::from_gguf(file).map_err(|e| e.to_string());
    Ok(Served {
        info,
        loaded,
        template,
        session,
    })
}

impl Backend for EngineBackend {
    fn models(&self) -> Vec<ModelInfo> {
        self.models.iter().map(|m| m.info.clone()).collect()
    }

    fn generate(
        &mut self,
        req: &GenRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenResult, BackendError> {
        let t0 = self.clock.now_us();
        let m = self
            .models
            .iter_mut()
            .find(|m| m.info.name == req.model)
            .ok_or_else(|| BackendError::UnknownModel(req.model.clone()))?;
        let text = req.prompt.render(&m.template)?;
        let ids = m.loaded.tokenizer.encode(&text, true, true);
        if ids.is_empty() {
            return Err(BackendError::Invalid("the prompt has no tokens".into()));
        }
        let capacity = m.session.capacity();
        if ids.len() >= capacity {
            return Err(BackendError::Invalid(format!(
                "prompt of {} tokens does not fit in the context of {capacity}",
                ids.len()
            )));
        }
        let shared = m.session.reuse_prefix(&ids);

        let config = req.sampling.apply(SamplerConfig::default());
        let max_tokens = req.max_tokens.map_or(capacity, |n| n as usize);
        let mut generator = Generator::new(Sampler::new(config), max_tokens);
        generator.stop = req.stop.clone();
        let t_run = self.clock.now_us();
        // A client that leaves stops the prompt between pieces as well as the reply.
        let sink = std::cell::RefCell::new(sink);
        let result = generator.run_with(
            &m.loaded.model,
            &mut m.session,
            &Detok(&m.loaded.tokenizer),
            &ids[shared..],
            &self.pool,
            &self.clock,
            &mut |piece| sink.borrow_mut().text(piece),
            &mut |_| sink.borrow_mut().gone(),
        );
        let g = match result {
            Ok(g) => g,
            Err(e) => {
                // The cache may hold part of a failed evaluation.
                m.session.reset();
                return Err(match e {
                    GenerateError::EmptyPrompt | GenerateError::PromptTooLong { .. } => {
                        BackendError::Invalid(e.to_string())
                    }
                    _ => BackendError::Internal(e.to_string()),
                });
            }
        };
        Ok(GenResult::from_generation(
            &g,
            ids.len(),
            t_run.saturating_sub(t0),
        ))
    }
}

/// Wall clock, monotonic clock and resident memory of this process.
struct HostEnv {
    start: Instant,
}

impl Env for HostEnv {
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn monotonic_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn memory_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

/// A generation handed to the inference thread, with the socket to answer on and a
/// channel to say how it ended.
struct Work {
    job: Job,
    stream: TcpStream,
    done: mpsc::Sender<JobEnd>,
}

/// The client socket as the API's output.
struct SocketOut<'a>(&'a TcpStream);

impl Output for SocketOut<'_> {
    fn send(&mut self, bytes: &[u8]) -> bool {
        let mut s = self.0;
        s.write_all(bytes).is_ok()
    }

    fn client_gone(&mut self) -> bool {
        client_gone(self.0)
    }
}

/// The client closed its side (a zero-byte peek), so a queued request can be dropped.
fn client_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let gone = match stream.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    gone
}

fn inference_thread(api: Arc<Api>, mut backend: EngineBackend, queue: mpsc::Receiver<Work>) {
    for work in queue {
        api.metrics.queue_depth.fetch_sub(1, Relaxed);
        let end = if client_gone(&work.stream) {
            JobEnd::Disconnected
        } else {
            api.run_job(work.job, &mut backend, &mut SocketOut(&work.stream))
        };
        let _ = work.done.send(end);
    }
}

/// Serves one client until it closes, times out or breaks the protocol.
fn connection(api: &Api, stream: TcpStream, queue: &SyncSender<Work>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut conn = Connection::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut request_started: Option<Instant> = None;
    let write = |bytes: &[u8]| (&stream).write_all(bytes).is_ok();
    loop {
        loop {
            match conn.next_event(api) {
                Event::NeedMore => break,
                Event::Respond { bytes, close } => {
                    request_started = None;
                    if !write(&bytes) || close {
                        return;
                    }
                }
                Event::Generate(job) => {
                    request_started = None;
                    let Ok(clone) = stream.try_clone() else {
                        return;
                    };
                    let (done, finished) = mpsc::channel();
                    api.metrics.queue_depth.fetch_add(1, Relaxed);
                    let work = Work {
                        job,
                        stream: clone,
                        done,
                    };
                    match queue.try_send(work) {
                        Ok(()) => match finished.recv() {
                            Ok(JobEnd::Done { keep_alive: true }) => {}
                            _ => return,
                        },
                        Err(TrySendError::Full(work)) | Err(TrySendError::Disconnected(work)) => {
                            api.metrics.queue_depth.fetch_sub(1, Relaxed);
                            // The 503 says `Connection: close` unless the client keeps
                            // the connection alive: then close it, or the client waits
                            // for the end of the response until the idle timeout.
                            if !write(&api.busy_response(&work.job)) || !work.job.keep_alive {
                                return;
                            }
                        }
                    }
                }
            }
        }
        let partial = conn.has_partial_request();
        let timeout = if partial {
            let started = *request_started.get_or_insert_with(Instant::now);
            match REQUEST_TIMEOUT.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => {
                    write(&api.timeout_response());
                    return;
                }
            }
        } else {
            IDLE_TIMEOUT
        };
        let _ = stream.set_read_timeout(Some(timeout));
        match (&stream).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                conn.feed(&buf[..n]);
                if request_started.is_none() && conn.has_partial_request() {
                    request_started = Some(Instant::now());
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if partial {
                    write(&api.timeout_response());
                }
                return;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

pub fn main(raw: &[String]) -> Result<(), String> {
    let o = parse_options(raw)?;
    let pool = match o.threads {
        Some(n) => ThreadPool::new(n),
        None => ThreadPool::with_available_parallelism(),
    }
    .map_err(|e| format!("cannot start worker threads: {e}"))?;
    let mut models = Vec::new();
    for path in &o.models {
        let served = load(path, o.context)?;
        if models
            .iter()
            .any(|m: &Served| m.info.name == served.info.name)
        {
            return Err(format!("two models are named `{}`", served.info.name));
        }
        eprintln!(
            "embodios serve: loaded `{}` ({}, {} context)",
            served.info.name, served.info.family, served.info.context_length
        );
        models.push(served);
    }
    let backend = EngineBackend {
        models,
        pool,
        clock: StdClock::new(),
    };
    let config = Config {
        api_key: o.api_key.clone(),
        ..Config::default()
    };
    let env = HostEnv {
        start: Instant::now(),
    };
    let api = Arc::new(Api::new(config, backend.models(), Box::new(env)));

    let listener = TcpListener::bind((o.host.as_str(), o.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", o.host, o.port))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listening socket: {e}"))?;
    eprintln!("embodios serve: listening on http://{addr}");

    // The queue holds requests waiting while one runs; zero capacity would make every
    // request but the first 503, so keep at least one slot.
    let (queue, jobs) = mpsc::sync_channel::<Work>(o.queue.max(1));
    {
        let api = Arc::clone(&api);
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || inference_thread(api, backend, jobs))
            .map_err(|e| format!("cannot start the inference thread: {e}"))?;
    }

    for incoming in listener.incoming() {
        let stream = match incoming {
            Ok(s) => s,
            Err(e) => {
                eprintln!("embodios serve: accept failed: {e}");
                continue;
            }
        };
        if api.metrics.connections.load(Relaxed) >= MAX_CONNECTIONS {
            let _ = (&stream).write_all(&api.overloaded_response());
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        api.metrics.connections.fetch_add(1, Relaxed);
        let api_for_count = Arc::clone(&api);
        let api = Arc::clone(&api);
        let queue = queue.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || {
                connection(&api, stream, &queue);
                api.metrics.connections.fetch_sub(1, Relaxed);
            });
        if let Err(e) = spawned {
            // The closure (and its stream) was dropped without running.
            api_for_count.metrics.connections.fetch_sub(1, Relaxed);
            eprintln!("embodios serve: cannot start a connection thread: {e}");
        }
    }
    Ok(())
}
