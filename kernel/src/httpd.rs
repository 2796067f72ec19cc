//! The HTTP API server: smoltcp TCP sockets listening on port 80 (or `port=`), each
//! driving an `embodios-api` [`Connection`]; generations run on the model registry
//! (loading a model on first use) from the shell's idle loop, streaming their output
//! through the socket while the stack keeps being polled and the other connections
//! keep being served (quick requests answered, generations queued or refused).
//!
//! Overload: at most [`MAX_CONNECTIONS`] connections are served at once and at most
//! [`MAX_QUEUE`] generations wait; beyond that a client gets a quick 503 with a JSON
//! error and `Retry-After` (the sockets past [`MAX_CONNECTIONS`] are a reserve kept for
//! these answers), never a TCP reset: SYNs that find no listening socket at all are
//! held back by the network layer (`net::SynGuard`) so the client's TCP retries.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use embodios_api::{
    Api, Backend, BackendError, Config, Connection, Env, Event, GenRequest, GenResult, Job, JobEnd,
    ModelInfo, Output, TokenSink,
};
use embodios_engine::{Detokenize, Generator, Sampler, SamplerConfig};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::arch::x86_64::time;
use crate::models::Registry;
use crate::net::Stack;
use crate::parallel::{CpuPool, TscClock};

/// Listening sockets: [`MAX_CONNECTIONS`] served connections plus a reserve that
/// accepts the connections beyond them only to answer 503 (a socket listens again
/// only once its connection is closed, so without the reserve those clients would
/// find no socket).
const SOCKETS: usize = 40;
/// Connections served at once (16 clients as the issue asks, plus room for keep-alive
/// clients and connections still closing); a connection beyond gets 503 at once.
const MAX_CONNECTIONS: usize = 32;
/// Generations waiting for their turn (as `embodios serve`'s default queue); one
/// more gets 503.
const MAX_QUEUE: usize = 16;
/// How often a running generation lets the other connections be served.
const TEND_EVERY_US: u64 = 5_000;
/// A request must arrive whole within this time of its first byte.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT_MS: u64 = 30_000;
/// A send that makes no progress for this long gives up on the client.
const SEND_TIMEOUT_MS: u64 = 30_000;

struct Slot {
    handle: SocketHandle,
    conn: Connection,
    /// Response bytes not yet accepted by the socket.
    out: Vec<u8>,
    /// Close once `out` is sent.
    close_after: bool,
    /// A generation waiting for the registry.
    job: Option<Job>,
    /// When the current partial request started.
    started_ms: Option<u64>,
    /// Whether the socket was connected at the last poll.
    connected: bool,
    /// Last time bytes moved on the connection.
    last_ms: u64,
    /// Accepted beyond [`MAX_CONNECTIONS`]: answered 503 and closing.
    refused: bool,
}

impl Slot {
    /// Back to a fresh listener's state.
    fn reset(&mut self) {
        self.conn = Connection::new();
        self.out.clear();
        self.close_after = false;
        self.job = None;
        self.started_ms = None;
        self.connected = false;
        self.refused = false;
    }
}

/// Counters `net` and `status` show.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// TCP connections accepted.
    pub connections: u64,
    /// Responses sent without a generation (version, tags, errors, ...).
    pub responses: u64,
    /// Generations run.
    pub generations: u64,
    /// Requests that timed out before arriving whole.
    pub timeouts: u64,
    /// Connections answered 503 on arrival (more than [`MAX_CONNECTIONS`]).
    pub refused: u64,
    /// Generations answered 503 because [`MAX_QUEUE`] were waiting.
    pub busy: u64,
}

struct Server {
    port: u16,
    /// Bearer token every API request must carry (`api_key=`), if any.
    api_key: Option<String>,
    slots: Vec<Slot>,
    api: Option<Api>,
    counters: Counters,
    /// The slot whose waiting generation runs next (round robin).
    next_job: usize,
}

static SERVER: spin::Mutex<Option<Server>> = spin::Mutex::new(None);

/// The `api_key=` option of the kernel command line (an empty value means none).
pub fn api_key_option(cmdline: &str) -> Option<String> {
    crate::cmdline::words(cmdline)
        .filter_map(|w| w.strip_prefix("api_key="))
        .last()
        .filter(|k| !k.is_empty())
        .map(String::from)
}

/// Opens the listening sockets on `stack` (called by `net::init`); with `api_key`,
/// every API request needs `Authorization: Bearer KEY` (401 otherwise).
pub fn init(stack: &mut Stack, port: u16, api_key: Option<String>) {
    let mut slots = Vec::new();
    for _ in 0..SOCKETS {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4 * 1024]),
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
        );
        sock.set_nagle_enabled(false);
        if sock.listen(port).is_err() {
            println!("http: cannot listen on port {port}");
            return;
        }
        slots.push(Slot {
            handle: stack.sockets.add(sock),
            conn: Connection::new(),
            out: Vec::new(),
            close_after: false,
            job: None,
            started_ms: None,
            connected: false,
            last_ms: 0,
            refused: false,
        });
    }
    *SERVER.lock() = Some(Server {
        port,
        api_key,
        slots,
        api: None,
        counters: Counters::default(),
        next_job: 0,
    });
    stack.device.guard_syns(port);
}

/// Time and memory for the API.
struct KernelEnv;

impl Env for KernelEnv {
    fn unix_ms(&self) -> u64 {
        crate::drivers::rtc::unix_ms()
    }

    fn monotonic_ns(&self) -> u64 {
        time::uptime_us() * 1000
    }

    fn memory_bytes(&self) -> Option<u64> {
        Some(crate::mem::stats().heap_used)
    }
}

/// FNV-1a over the first 64 KiB (header) and the length: a stable identifier, not a
/// hash of the weights.
fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes[..bytes.len().min(64 << 10)]
        .iter()
        .chain(&(bytes.len() as u64).to_le_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The usable model modules as the API lists them.
fn model_infos(reg: &Registry) -> Vec<ModelInfo> {
    reg.slots
        .iter()
        .filter_map(|slot| {
            let s = slot.check.as_ref().ok()?;
            let quantization = s
                .quant_mix
                .iter()
                .max_by_key(|(_, n)| *n)
                .map(|(t, _)| format!("{t:?}"))
                .unwrap_or_default();
            Some(ModelInfo {
                name: slot.name.clone(),
                aliases: s.title.iter().cloned().collect(),
                family: s.arch.clone(),
                parameter_count: s.params,
                quantization,
                size_bytes: slot.bytes.len() as u64,
                context_length: crate::models::CONTEXT as u64,
                digest: slot
                    .manifest
                    .as_ref()
                    .map(|m| m.sha256.clone())
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| digest(slot.bytes)),
                template: String::new(),
                modified_unix_s: 0,
            })
        })
        .collect()
}

/// Generated text as the API wants it (control tokens render as nothing).
struct Detok<'t>(&'t embodios_tokenizer::Tokenizer);

impl Detokenize for Detok<'_> {
    fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.token_to_piece(id, false));
    }

    fn is_eog(&self, id: u32) -> bool {
        self.0.is_eog(id)
    }
}

/// The model registry as the API's backend.
struct RegistryBackend<'r> {
    reg: &'r mut Registry,
}

impl Backend for RegistryBackend<'_> {
    fn models(&self) -> Vec<ModelInfo> {
        model_infos(self.reg)
    }

    fn generate(
        &mut self,
        req: &GenRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenResult, BackendError> {
        let t0 = time::uptime_us();
        let infos = model_infos(self.reg);
        let name = infos
            .iter()
            .find(|m| m.answers_to(&req.model))
            .map(|m| m.name.clone())
            .ok_or_else(|| BackendError::UnknownModel(req.model.clone()))?;
        let i = self
            .reg
            .find(&name)
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        if self.reg.slots[i].loaded.is_none() {
            self.reg
                .load(&name)
                .map_err(|e| BackendError::Internal(format!("cannot load `{name}`: {e}")))?;
        }
        let m = self.reg.slots[i]
            .loaded
            .as_mut()
            .ok_or_else(|| BackendError::Internal(format!("`{name}` did not load")))?;
        let text = req.prompt.render(&m.template)?;
        let ids = m.tokenizer.encode(&text, true, true);
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
        // The console's `talk` conversation shares this session: an API request
        // replaces it.
        m.history.clear();
        let shared = m.session.reuse_prefix(&ids);

        let config = req.sampling.apply(SamplerConfig::default());
        let max_tokens = req.max_tokens.map_or(capacity, |n| n as usize);
        let mut generator = Generator::new(Sampler::new(config), max_tokens);
        generator.stop = req.stop.clone();
        let t_run = time::uptime_us();
        generator.prefill_piece = crate::infer::PREFILL_PIECE;
        // The text callback and the cancel check both reach the client's sink: a client
        // that leaves stops the prompt between pieces as well as the reply.
        let sink = core::cell::RefCell::new(sink);
        let result = generator.run_with(
            &m.model,
            &mut m.session,
            &Detok(&m.tokenizer),
            &ids[shared..],
            &CpuPool,
            &TscClock,
            &mut |piece| sink.borrow_mut().text(piece),
            &mut |_| sink.borrow_mut().gone(),
        );
        let g = match result {
            Ok(g) => g,
            Err(e) => {
                m.session.reset();
                return Err(BackendError::Internal(e.to_string()));
            }
        };
        Ok(GenResult::from_generation(
            &g,
            ids.len(),
            t_run.saturating_sub(t0),
        ))
    }
}

/// A generation's output: straight into the socket, polling the stack until it fits;
/// between pieces the other connections are served ([`Tend`]).
struct SocketOut<'s> {
    stack: &'s mut Stack,
    handle: SocketHandle,
    others: Tend<'s>,
}

impl SocketOut<'_> {
    /// Polls the stack and, now and then, serves the other connections.
    fn poll(&mut self) {
        self.stack.poll();
        let now = time::uptime_us();
        if now.saturating_sub(self.others.last_us) >= TEND_EVERY_US {
            self.others.last_us = now;
            self.others.run(self.stack);
        }
    }
}

impl Output for SocketOut<'_> {
    fn send(&mut self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        let mut last_progress = time::uptime_ms();
        while !rest.is_empty() {
            let sock = self.stack.sockets.get_mut::<tcp::Socket>(self.handle);
            if !sock.may_send() {
                return false;
            }
            match sock.send_slice(rest) {
                Ok(0) => {}
                Ok(n) => {
                    rest = &rest[n..];
                    last_progress = time::uptime_ms();
                }
                Err(_) => return false,
            }
            self.poll();
            if time::uptime_ms() - last_progress > SEND_TIMEOUT_MS {
                return false;
            }
        }
        true
    }

    fn client_gone(&mut self) -> bool {
        self.poll();
        !self
            .stack
            .sockets
            .get_mut::<tcp::Socket>(self.handle)
            .may_send()
    }
}

/// Serving the connections other than the one whose generation runs: they are
/// accepted (or refused), answered, and their generations queued (or refused).
struct Tend<'s> {
    slots: &'s mut [Slot],
    api: &'s Api,
    counters: &'s mut Counters,
    port: u16,
    /// The slot whose generation runs now (left alone).
    running: Option<usize>,
    last_us: u64,
}

impl Tend<'_> {
    fn run(&mut self, stack: &mut Stack) {
        let mut ctx = Ctx {
            api: self.api,
            counters: &mut *self.counters,
            port: self.port,
            queued: self.slots.iter().filter(|s| s.job.is_some()).count(),
            active: self
                .slots
                .iter()
                .filter(|s| s.connected && !s.refused)
                .count(),
        };
        let mut buf = [0u8; 2048];
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if Some(i) != self.running {
                tend_slot(slot, stack, &mut ctx, &mut buf);
            }
        }
        self.api
            .metrics
            .queue_depth
            .store(ctx.queued as u64, Relaxed);
    }
}

/// What [`tend_slot`] needs besides the slot.
struct Ctx<'a> {
    api: &'a Api,
    counters: &'a mut Counters,
    port: u16,
    /// Generations waiting now.
    queued: usize,
    /// Connections being served now (not counting refused ones).
    active: usize,
}

/// Polls the network and serves every connection; runs a waiting generation on
/// `reg`. Called from the shell's idle loop.
pub fn poll(reg: &mut Registry) {
    crate::net::with_stack(|stack| {
        stack.poll();
        let mut guard = SERVER.lock();
        let Some(srv) = guard.as_mut() else { return };
        if srv.api.is_none() {
            srv.api = Some(Api::new(
                Config {
                    version: String::from(crate::VERSION),
                    api_key: srv.api_key.clone(),
                    ..Config::default()
                },
                model_infos(reg),
                Box::new(KernelEnv),
            ));
        }
        service(srv, stack, reg);
    });
}

fn service(srv: &mut Server, stack: &mut Stack, reg: &mut Registry) {
    let Server {
        port,
        slots,
        api_key: _,
        api,
        counters,
        next_job,
    } = srv;
    let Some(api) = api.as_ref() else { return };
    // One waiting generation per call, round robin; while it runs, the other
    // connections are served between its pieces (new clients accepted or refused
    // with 503, quick requests answered, further generations queued).
    let count = slots.len();
    let run = (0..count)
        .map(|k| (*next_job + k) % count)
        .find(|&i| slots[i].job.is_some());
    if let Some((i, job)) = run.and_then(|i| Some((i, slots[i].job.take()?))) {
        *next_job = i + 1;
        counters.generations += 1;
        let handle = slots[i].handle;
        let end = api.run_job(
            job,
            &mut RegistryBackend { reg: &mut *reg },
            &mut SocketOut {
                stack: &mut *stack,
                handle,
                others: Tend {
                    slots: &mut slots[..],
                    api,
                    counters: &mut *counters,
                    port: *port,
                    running: Some(i),
                    last_us: time::uptime_us(),
                },
            },
        );
        let slot = &mut slots[i];
        if end != (JobEnd::Done { keep_alive: true }) {
            slot.close_after = true;
        }
        slot.last_ms = time::uptime_ms();
    }
    Tend {
        slots: &mut slots[..],
        api,
        counters,
        port: *port,
        running: None,
        last_us: 0,
    }
    .run(stack);
    stack.poll();
}

/// One connection: recycle a closed socket as a listener, accept (or refuse with
/// 503), send what is queued, read and answer requests, queue a generation (or
/// refuse it with 503), time out slow and idle clients.
fn tend_slot(slot: &mut Slot, stack: &mut Stack, ctx: &mut Ctx<'_>, buf: &mut [u8]) {
    let api = ctx.api;
    let sock = stack.sockets.get_mut::<tcp::Socket>(slot.handle);
    if !sock.is_open() {
        // Closed (by us or the peer): recycle the slot as a listener.
        if slot.connected {
            api.metrics.connections.fetch_sub(1, Relaxed);
            if !slot.refused {
                ctx.active = ctx.active.saturating_sub(1);
            }
        }
        if slot.job.is_some() {
            ctx.queued = ctx.queued.saturating_sub(1);
        }
        slot.reset();
        let _ = sock.listen(ctx.port);
        return;
    }
    // Established, or already half-closed by a client that sent its request and
    // FIN at once.
    if !slot.connected && sock.may_send() {
        slot.connected = true;
        slot.last_ms = time::uptime_ms();
        ctx.counters.connections += 1;
        api.metrics.connections.fetch_add(1, Relaxed);
        if ctx.active >= MAX_CONNECTIONS {
            // Over capacity: a quick 503 from the reserve, then close (the request,
            // if any arrived, is never read).
            slot.refused = true;
            ctx.counters.refused += 1;
            slot.out = api.overloaded_response();
            slot.close_after = true;
        } else {
            ctx.active += 1;
        }
    }
    // Send what is queued.
    if !slot.out.is_empty() && sock.can_send() {
        if let Ok(n) = sock.send_slice(&slot.out) {
            slot.out.drain(..n);
        }
    }
    if !slot.out.is_empty() {
        return;
    }
    if slot.close_after {
        sock.close();
        return;
    }
    if slot.job.is_some() {
        // Its generation waits for its turn; a pipelined next request waits too.
        return;
    }
    while sock.can_recv() {
        match sock.recv_slice(buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                slot.last_ms = time::uptime_ms();
                slot.conn.feed(&buf[..n]);
                if slot.started_ms.is_none() && slot.conn.has_partial_request() {
                    slot.started_ms = Some(time::uptime_ms());
                }
            }
        }
    }
    loop {
        match slot.conn.next_event(api) {
            Event::NeedMore => break,
            Event::Respond { bytes, close } => {
                ctx.counters.responses += 1;
                slot.started_ms = None;
                slot.out.extend_from_slice(&bytes);
                if close {
                    slot.close_after = true;
                    break;
                }
            }
            Event::Generate(job) if ctx.queued >= MAX_QUEUE => {
                // The queue is full: 503 now; the connection stays usable.
                ctx.counters.busy += 1;
                ctx.counters.responses += 1;
                slot.started_ms = None;
                slot.out.extend_from_slice(&api.busy_response(&job));
                if !job.keep_alive {
                    slot.close_after = true;
                    break;
                }
            }
            Event::Generate(job) => {
                slot.started_ms = None;
                slot.job = Some(job);
                ctx.queued += 1;
                break;
            }
        }
    }
    if slot.job.is_none() && slot.out.is_empty() && !slot.close_after {
        if !slot.conn.has_partial_request() {
            slot.started_ms = None;
        }
        let late = slot
            .started_ms
            .is_some_and(|t| time::uptime_ms() - t > REQUEST_TIMEOUT_MS);
        if late {
            ctx.counters.timeouts += 1;
            slot.out = api.timeout_response();
            slot.close_after = true;
        } else if slot.connected
            && (sock.state() == tcp::State::CloseWait
                || time::uptime_ms() - slot.last_ms > IDLE_TIMEOUT_MS)
        {
            // The client finished sending (nothing is left to answer), or a
            // keep-alive connection has been idle too long.
            sock.close();
        }
    }
    if !slot.out.is_empty() && sock.can_send() {
        if let Ok(n) = sock.send_slice(&slot.out) {
            slot.out.drain(..n);
        }
    }
}

/// One line for `status`: the API's requests by status class, open connections,
/// queued generations and tokens served.
pub fn status_line() -> String {
    let guard = SERVER.lock();
    let Some(srv) = guard.as_ref() else {
        return "not running (no network interface)".to_string();
    };
    let open = srv.slots.iter().filter(|s| s.connected).count();
    let queued = srv.slots.iter().filter(|s| s.job.is_some()).count();
    let Some(api) = &srv.api else {
        return format!("port {}, no request yet, {open} open connections", srv.port);
    };
    let m = &api.metrics;
    let c = m.requests_by_class();
    let total: u64 = c.iter().sum();
    format!(
        "{total} requests (2xx {}, 4xx {}, 5xx {}), {open} open connections, {queued} queued, {} tokens served",
        c[2],
        c[4],
        c[5],
        m.generated_tokens.load(Relaxed)
    )
}

/// HTTP lines for `net`.
pub fn print_status(_stack: &Stack) {
    let guard = SERVER.lock();
    let Some(srv) = guard.as_ref() else {
        println!("  http:     not running");
        return;
    };
    let c = srv.counters;
    let open = srv.slots.iter().filter(|s| s.connected).count();
    println!(
        "  http:     port {}{}, {} open of {} sockets; {} connections, {} responses, {} generations, {} timeouts",
        srv.port,
        if srv.api_key.is_some() { " (bearer token)" } else { "" },
        open,
        srv.slots.len(),
        c.connections,
        c.responses,
        c.generations,
        c.timeouts
    );
    println!(
        "  overload: {} connections refused (over {MAX_CONNECTIONS}), {} generations refused (over {MAX_QUEUE} queued); 503 each",
        c.refused, c.busy
    );
    if let Some(api) = &srv.api {
        println!(
            "  api:      {} generated tokens, {} prompt tokens, {} cancelled",
            api.metrics.generated_tokens.load(Relaxed),
            api.metrics.prompt_tokens.load(Relaxed),
            api.metrics.cancelled.load(Relaxed)
        );
    }
}
