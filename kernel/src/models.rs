//! The model registry: GGUF files GRUB loaded as boot modules (used in place, never
//! copied), the manifest that names them, and loading/unloading models with their
//! tokenizer, chat template and KV cache.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use embodios_engine::generate::largest_prefill_piece;
use embodios_engine::{
    ChatTemplate, Model, ModelOptions, Sampler, SamplerConfig, Session, SessionOptions,
};
use embodios_gguf::{GgmlType, GgufFile};
use embodios_tokenizer::Tokenizer;
use sha2::{Digest, Sha256};

use crate::arch::x86_64::{boot::BootInfo, memory};

/// Command line of the manifest module (`module2 /boot/models.manifest manifest`).
pub const MANIFEST_MODULE: &str = "manifest";

/// Context positions a loaded model gets by default (capped by its trained length):
/// the KV cache is sized for this many tokens when the model is loaded. `load NAME
/// --ctx N` and the boot option `ctx=N` choose another size.
pub const CONTEXT: usize = 2048;

/// The context `load` uses when none is given (`ctx=` on the command line).
static DEFAULT_CONTEXT: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(CONTEXT);

/// Sets the context size later loads use by default.
pub fn set_default_context(n: usize) {
    DEFAULT_CONTEXT.store(n.max(1), core::sync::atomic::Ordering::Relaxed);
}

/// The context size loads use by default.
pub fn default_context() -> usize {
    DEFAULT_CONTEXT.load(core::sync::atomic::Ordering::Relaxed)
}

/// Heap that must stay free after a load, for the shell, prompts and generations.
const HEAP_RESERVE: u64 = 8 << 20;

/// One line of the manifest `cargo xtask iso` writes:
/// `NAME FILE SIZE SHA256 default|-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Name the shell uses (also the module's command line).
    pub name: String,
    /// File name the model had on the host.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
    /// Boot this model when the command line names none.
    pub default: bool,
}

/// Why a manifest line is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// Fewer than five fields.
    MissingFields { line: usize },
    /// The size is not a number.
    BadSize { line: usize },
    /// The digest is not 64 hex digits.
    BadDigest { line: usize },
    /// The last field is neither `default` nor `-`.
    BadFlag { line: usize },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::MissingFields { line } => write!(
                f,
                "manifest line {line}: expected `NAME FILE SIZE SHA256 default|-`"
            ),
            ManifestError::BadSize { line } => write!(f, "manifest line {line}: bad size"),
            ManifestError::BadDigest { line } => {
                write!(f, "manifest line {line}: SHA-256 must be 64 hex digits")
            }
            ManifestError::BadFlag { line } => {
                write!(
                    f,
                    "manifest line {line}: last field must be `default` or `-`"
                )
            }
        }
    }
}

/// Parses the manifest text (blank lines and `#` comments are skipped).
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, ManifestError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split_ascii_whitespace().collect();
        if f.len() < 5 {
            return Err(ManifestError::MissingFields { line });
        }
        let size = f[2].parse().map_err(|_| ManifestError::BadSize { line })?;
        if f[3].len() != 64 || !f[3].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ManifestError::BadDigest { line });
        }
        let default = match f[4] {
            "default" => true,
            "-" => false,
            _ => return Err(ManifestError::BadFlag { line }),
        };
        out.push(ManifestEntry {
            name: f[0].to_string(),
            file: f[1].to_string(),
            size,
            sha256: f[3].to_ascii_lowercase(),
            default,
        });
    }
    Ok(out)
}

/// What the cheap boot-time check learned about a module that is a usable GGUF file.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `general.architecture`.
    pub arch: String,
    /// `general.name`, if any.
    pub title: Option<String>,
    /// Total elements over all tensors.
    pub params: u64,
    /// Tensor count per type, most common first.
    pub quant_mix: Vec<(GgmlType, usize)>,
}

impl Summary {
    /// `Q4_1 x183, F32 x61, Q8_0 x1`.
    pub fn quant_mix_text(&self) -> String {
        let parts: Vec<String> = self
            .quant_mix
            .iter()
            .map(|(t, n)| format!("{} x{n}", t.name()))
            .collect();
        parts.join(", ")
    }
}

/// A model in memory: weights borrowed from its module, plus what it owns. The parsed
/// GGUF tables are dropped once the model, tokenizer and template are built from them
/// (the weight views borrow the module, not the tables).
pub struct Loaded {
    /// Hyperparameters and weight views.
    pub model: Model<'static>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, or why it has none `talk` can use.
    pub template: Result<ChatTemplate, String>,
    /// The conversation state (`generate` resets it; `talk` reuses its prefix).
    pub session: Session,
    /// Bytes of the KV cache.
    pub kv_bytes: usize,
    /// Heap bytes the load took (tokenizer, KV cache, scratch, norms).
    pub heap_bytes: u64,
    /// What the load took, part by part.
    pub memory: LoadMemory,
    /// The most heap any generation on this model used above what it held before
    /// (batch buffers the session keeps, the sampler's candidates, token lists).
    pub peak_generation_bytes: u64,
    /// `talk`'s conversation: (role, text) turns.
    pub history: Vec<(String, String)>,
}

/// Heap a load consumed, measured as the drop in free heap (so the allocator's own
/// bookkeeping per allocation is included), part by part.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadMemory {
    /// The parsed GGUF tables and the model's tensor views, norms and RoPE tables.
    pub tables: u64,
    /// The tokenizer and the chat template.
    pub tokenizer: u64,
    /// The KV cache (f16 keys and values).
    pub kv: u64,
    /// The session's other buffers (activations, logits, attention scratch).
    pub buffers: u64,
    /// Everything, including the registry's own record.
    pub total: u64,
}

impl Loaded {
    /// Memory beyond the weights: what the load took plus the most any generation
    /// added on top (the weights themselves stay in their boot module).
    pub fn beyond_weights(&self) -> u64 {
        self.memory.total + self.peak_generation_bytes
    }

    /// One line: `23.1 MiB beyond the weights (24234567 bytes: KV cache ..., ...)`.
    pub fn memory_line(&self) -> String {
        let m = &self.memory;
        format!(
            "{} beyond the weights ({} bytes: KV cache {}, session buffers {}, tokenizer and \
             template {}, model tables {}, generation peak {})",
            human_bytes(self.beyond_weights()),
            self.beyond_weights(),
            human_bytes(m.kv),
            human_bytes(m.buffers),
            human_bytes(m.tokenizer),
            human_bytes(m.tables),
            human_bytes(self.peak_generation_bytes)
        )
    }
}

/// One boot module that is meant to be a model.
pub struct Slot {
    /// Name (the module's command line).
    pub name: String,
    /// The module's bytes, in place.
    pub bytes: &'static [u8],
    /// Its manifest entry, if the manifest lists it.
    pub manifest: Option<ManifestEntry>,
    /// The boot-time check: a summary, or why the module cannot be used.
    pub check: Result<Summary, String>,
    /// Present while loaded.
    pub loaded: Option<Box<Loaded>>,
}

/// Why `load`, `unload`, `switch` or `verify` refused.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryError {
    /// No module has that name.
    Unknown { name: String, known: String },
    /// The module failed the boot-time check.
    Unusable { name: String, why: String },
    /// The engine refused the file (architecture, tensor types, shapes).
    Engine { name: String, why: String },
    /// The model's KV cache and buffers do not fit in free memory (`free` is what the
    /// heap has free in all, `block` the largest contiguous piece found when that was
    /// what failed).
    OutOfMemory {
        name: String,
        context: usize,
        kv: u64,
        need: u64,
        free: u64,
        block: Option<u64>,
    },
    /// `--ctx` outside 1..=the model's trained context.
    BadContext {
        name: String,
        asked: usize,
        trained: usize,
    },
    /// The model is already loaded.
    AlreadyLoaded(String),
    /// The model is not loaded.
    NotLoaded(String),
    /// `verify`: the manifest does not list the module.
    NoManifest(String),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Unknown { name, known } => {
                write!(f, "no model named `{name}` (available: {known})")
            }
            RegistryError::Unusable { name, why } => {
                write!(f, "model `{name}` cannot be used: {why}")
            }
            RegistryError::Engine { name, why } => write!(f, "cannot load `{name}`: {why}"),
            RegistryError::OutOfMemory {
                name,
                context,
                kv,
                need,
                free,
                block,
            } => {
                write!(
                    f,
                    "`{name}` does not fit in memory: it needs {} KiB (KV cache {} KiB for \
                     {context} positions, buffers, tokenizer, reserve), {} KiB are free",
                    need / 1024,
                    kv / 1024,
                    free / 1024
                )?;
                if let Some(b) = block {
                    write!(
                        f,
                        " but not in one piece (the allocation of {} KiB failed)",
                        b / 1024
                    )?;
                }
                write!(
                    f,
                    "; unload a model, load with a shorter context (`load {name} --ctx N`) \
                     or boot with more RAM"
                )
            }
            RegistryError::BadContext {
                name,
                asked,
                trained,
            } => write!(
                f,
                "--ctx {asked} for `{name}`: want 1 to {trained} (its trained context)"
            ),
            RegistryError::AlreadyLoaded(n) => write!(f, "model `{n}` is already loaded"),
            RegistryError::NotLoaded(n) => {
                write!(f, "model `{n}` is not loaded (use `load {n}` first)")
            }
            RegistryError::NoManifest(n) => {
                write!(f, "the manifest has no SHA-256 for `{n}`")
            }
        }
    }
}

/// Every model module and which one is active.
#[derive(Default)]
pub struct Registry {
    /// Model modules in boot order.
    pub slots: Vec<Slot>,
    /// Index of the active model (loaded).
    pub active: Option<usize>,
    /// Problem with the manifest, if any (the models still work without it).
    pub manifest_error: Option<String>,
}

fn free_heap() -> u64 {
    crate::mem::heap_available()
}

/// The cheap checks: GGUF header and tensor table (every tensor's data inside the file),
/// plus the size the manifest recorded.
fn check(bytes: &'static [u8], manifest: Option<&ManifestEntry>) -> Result<Summary, String> {
    if let Some(m) = manifest {
        if m.size != bytes.len() as u64 {
            return Err(format!(
                "module is {} bytes but the manifest says {} (truncated or replaced)",
                bytes.len(),
                m.size
            ));
        }
    }
    let file = GgufFile::parse(bytes).map_err(|e| format!("not a valid GGUF file: {e}"))?;
    let arch = file
        .architecture()
        .ok_or("not a model: the GGUF file has no `general.architecture`")?;
    let mut mix: Vec<(GgmlType, usize)> = Vec::new();
    let mut params = 0u64;
    for t in &file.tensors {
        params = params.saturating_add(t.n_elements());
        match mix.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some((_, n)) => *n += 1,
            None => mix.push((t.ty, 1)),
        }
    }
    mix.sort_by_key(|m| core::cmp::Reverse(m.1));
    Ok(Summary {
        arch: arch.to_string(),
        title: file.get_str("general.name").map(|s| s.to_string()),
        params,
        quant_mix: mix,
    })
}

/// How the kernel sizes a model's session: attention scratch for every online core,
/// batch buffers for the largest prefill piece the generator cuts.
fn session_options() -> SessionOptions {
    SessionOptions {
        workers: crate::arch::x86_64::smp::online_cpus().max(1),
        max_batch: largest_prefill_piece(crate::infer::PREFILL_PIECE),
    }
}

/// What a session of `model` will take from the heap, as the engine sizes it: (KV
/// cache, everything else the session and a generation on it allocate: its buffers and
/// the sampler's).
fn session_bytes(model: &Model<'_>) -> (u64, u64) {
    let bytes = model.session_bytes(session_options());
    let sampler = Sampler::new(SamplerConfig::default())
        .reserved_bytes(model.config.vocab_size, model.context_len());
    (bytes.kv_cache as u64, (bytes.buffers + sampler) as u64)
}

/// The tokenizer's tables take at most about this many times the metadata that holds
/// them (measured: SmolLM2 4.8 MiB from 1.7 MiB of metadata, 2.8x; Gemma 3 21 MiB from
/// 6.2 MiB, 3.4x).
const TOKENIZER_FACTOR: u64 = 4;

impl Registry {
    /// Finds the model modules (every module but the manifest) and checks each.
    pub fn from_boot(boot: &BootInfo) -> Self {
        let mut r = Registry::default();
        let mut manifest = Vec::new();
        for m in boot.modules() {
            if m.name.as_str() == MANIFEST_MODULE {
                let bytes = memory::module_bytes(m);
                match core::str::from_utf8(bytes)
                    .map_err(|_| "the manifest is not UTF-8".to_string())
                    .and_then(|t| parse_manifest(t).map_err(|e| e.to_string()))
                {
                    Ok(list) => manifest = list,
                    Err(e) => r.manifest_error = Some(e),
                }
            }
        }
        for (i, m) in boot.modules().iter().enumerate() {
            let name = m.name.as_str();
            if name == MANIFEST_MODULE {
                continue;
            }
            let name = match name.split_ascii_whitespace().next() {
                Some(n) => n.to_string(),
                None => format!("module{i}"),
            };
            let bytes = memory::module_bytes(m);
            let entry = manifest.iter().find(|e| e.name == name).cloned();
            let check = check(bytes, entry.as_ref());
            r.slots.push(Slot {
                name,
                bytes,
                manifest: entry,
                check,
                loaded: None,
            });
        }
        r
    }

    /// The name the manifest marks as the default, if any.
    pub fn default_name(&self) -> Option<&str> {
        self.slots
            .iter()
            .find(|s| s.manifest.as_ref().is_some_and(|m| m.default))
            .map(|s| s.name.as_str())
    }

    /// Index of the slot called `name`.
    pub fn find(&self, name: &str) -> Result<usize, RegistryError> {
        self.slots
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| RegistryError::Unknown {
                name: name.to_string(),
                known: self.names(),
            })
    }

    /// `a, b, c` or `none`.
    pub fn names(&self) -> String {
        if self.slots.is_empty() {
            return "none: the ISO has no model modules".to_string();
        }
        let v: Vec<&str> = self.slots.iter().map(|s| s.name.as_str()).collect();
        v.join(", ")
    }

    /// Registers a model whose bytes live for the rest of the run outside any boot
    /// module (read from disk into frames); it gets the same checks as a module.
    /// Returns the slot index, or why the bytes are not a usable model.
    pub fn add_model(&mut self, name: &str, bytes: &'static [u8]) -> Result<usize, String> {
        if self.slots.iter().any(|s| s.name == name) {
            return Err(format!("a model named `{name}` exists already"));
        }
        let summary = check(bytes, None)?;
        self.slots.push(Slot {
            name: name.to_string(),
            bytes,
            manifest: None,
            check: Ok(summary),
            loaded: None,
        });
        Ok(self.slots.len() - 1)
    }

    /// Loads `name` with the default context (see [`Registry::load_with`]).
    pub fn load(&mut self, name: &str) -> Result<(), RegistryError> {
        self.load_with(name, None)
    }

    /// Loads `name` (weights stay in the module; the KV cache for `context` positions,
    /// default [`default_context`], capped by the trained length, and the tokenizer
    /// come from the heap). Before anything large is allocated the load checks that it
    /// fits: against the free heap, then by reserving one block as large as everything
    /// it will take (`try_reserve`, which fails instead of panicking) and giving it
    /// back; a load that does not fit is refused with the sizes. The first loaded
    /// model becomes active.
    pub fn load_with(&mut self, name: &str, context: Option<usize>) -> Result<(), RegistryError> {
        let i = self.find(name)?;
        let slot = &mut self.slots[i];
        if slot.loaded.is_some() {
            return Err(RegistryError::AlreadyLoaded(slot.name.clone()));
        }
        if let Err(why) = &slot.check {
            return Err(RegistryError::Unusable {
                name: slot.name.clone(),
                why: why.clone(),
            });
        }
        let engine = |why: String| RegistryError::Engine {
            name: name.to_string(),
            why,
        };
        let free0 = free_heap();
        let file = GgufFile::parse(slot.bytes).map_err(|e| engine(e.to_string()))?;
        let trained = file
            .architecture()
            .and_then(|a| file.get_u64(&format!("{a}.context_length")))
            .unwrap_or(u64::MAX) as usize;
        let context = match context {
            Some(n) if n == 0 || n > trained => {
                return Err(RegistryError::BadContext {
                    name: name.to_string(),
                    asked: n,
                    trained,
                })
            }
            Some(n) => n,
            None => default_context(),
        };
        let options = ModelOptions {
            max_context: Some(context),
        };
        let model = Model::load(&file, options).map_err(|e| engine(e.to_string()))?;
        let free1 = free_heap();
        let (kv, buffers) = session_bytes(&model);
        let tokenizer = file.data_offset.saturating_mul(TOKENIZER_FACTOR);
        let block = kv.saturating_add(buffers).saturating_add(tokenizer);
        let need = block.saturating_add(HEAP_RESERVE);
        let refuse = |block: Option<u64>| RegistryError::OutOfMemory {
            name: name.to_string(),
            context: model.context_len(),
            kv,
            need,
            free: free1,
            block,
        };
        if need > free1 {
            return Err(refuse(None));
        }
        // Free bytes may be scattered; the KV cache needs two large pieces. One block
        // of the whole size proves they fit (each later allocation carves from it).
        let mut probe: Vec<u8> = Vec::new();
        if probe.try_reserve_exact(block as usize).is_err() {
            return Err(refuse(Some(block)));
        }
        drop(probe);
        let tokenizer = Tokenizer::from_gguf(&file)
            .map_err(|e| engine(format!("cannot build the tokenizer: {e}")))?;
        let template = ChatTemplate::from_gguf(&file).map_err(|e| e.to_string());
        let free2 = free_heap();
        // Sized up front and reserved with `try_reserve`: a failure is a refusal.
        let session = model
            .try_new_session(session_options())
            .map_err(|_| refuse(Some(block)))?;
        let free3 = free_heap();
        drop(file);
        let file_tables = free_heap().saturating_sub(free3);
        let kv_bytes = session.cache().bytes();
        let mut loaded = Box::new(Loaded {
            model,
            tokenizer,
            template,
            session,
            kv_bytes,
            heap_bytes: 0,
            memory: LoadMemory::default(),
            peak_generation_bytes: 0,
            history: Vec::new(),
        });
        let total = free0.saturating_sub(free_heap());
        let session_total = free2.saturating_sub(free3);
        loaded.memory = LoadMemory {
            tables: free0.saturating_sub(free1).saturating_sub(file_tables),
            tokenizer: free1.saturating_sub(free2),
            kv: kv_bytes as u64,
            buffers: session_total.saturating_sub(kv_bytes as u64),
            total,
        };
        loaded.heap_bytes = total;
        slot.loaded = Some(loaded);
        if self.active.is_none() {
            self.active = Some(i);
        }
        Ok(())
    }

    /// Drops a loaded model's tokenizer, KV cache and buffers (memory returns to the
    /// heap); the module stays available for a later `load`.
    pub fn unload(&mut self, name: &str) -> Result<(), RegistryError> {
        let i = self.find(name)?;
        if self.slots[i].loaded.take().is_none() {
            return Err(RegistryError::NotLoaded(name.to_string()));
        }
        if self.active == Some(i) {
            self.active = self.slots.iter().position(|s| s.loaded.is_some());
        }
        Ok(())
    }

    /// Makes a loaded model the active one.
    pub fn switch(&mut self, name: &str) -> Result<(), RegistryError> {
        let i = self.find(name)?;
        if self.slots[i].loaded.is_none() {
            return Err(RegistryError::NotLoaded(name.to_string()));
        }
        self.active = Some(i);
        Ok(())
    }

    /// The active model's slot.
    pub fn active(&mut self) -> Option<(&str, &mut Loaded)> {
        let slot = &mut self.slots[self.active?];
        let loaded = slot.loaded.as_deref_mut()?;
        Some((slot.name.as_str(), loaded))
    }

    /// SHA-256 of the module against the manifest: Ok(true) when they match; the
    /// computed digest in hex either way.
    pub fn verify(&self, name: &str) -> Result<(bool, String), RegistryError> {
        let slot = &self.slots[self.find(name)?];
        let m = slot
            .manifest
            .as_ref()
            .ok_or_else(|| RegistryError::NoManifest(name.to_string()))?;
        let digest = Sha256::digest(slot.bytes);
        let mut hex = String::with_capacity(64);
        for b in digest {
            hex.push_str(&format!("{b:02x}"));
        }
        Ok((hex == m.sha256, hex))
    }
}

/// `135.0M` / `3.2M` / `812K` style parameter counts.
pub fn human_count(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}K", n as f64 / 1e3)
    } else {
        format!("{n}")
    }
}

/// Bytes as KiB or MiB.
pub fn human_bytes(n: u64) -> String {
    if n >= 10 << 20 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", n.div_ceil(1024))
    }
}
