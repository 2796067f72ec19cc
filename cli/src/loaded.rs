//! Loading a model for the CLI: reading the file, parsing GGUF, building the model and
//! tokenizer, and the options every generating command shares.

use crate::args::{ArgError, Args, Valued};
use embodios_engine::{Detokenize, Model, ModelOptions, SamplerConfig};
use embodios_gguf::GgufFile;
use embodios_tokenizer::Tokenizer;

/// Context length used when neither the user nor a smaller model limit says otherwise;
/// the same default as llama.cpp's tools.
const DEFAULT_CONTEXT: usize = 4096;

/// A model file's bytes: read into huge pages (`embodios_host::HugePageBytes`, faster
/// weight streaming) or, where that fails, mapped into memory from the page cache.
pub struct ModelBytes {
    map: Option<memmap2::Mmap>,
    huge: Option<embodios_host::HugePageBytes>,
}

impl ModelBytes {
    /// Bytes of the model held in this process's anonymous memory (the huge-page copy),
    /// 0 when the file is mapped from the page cache instead. Memory figures beyond the
    /// weights subtract it.
    pub fn copied_len(&self) -> usize {
        self.huge.as_ref().map_or(0, |h| h.len())
    }

    /// A copy of the bytes on the heap, for callers that need an owned buffer.
    pub fn into_boxed_slice(self) -> Box<[u8]> {
        Box::from(&*self)
    }
}

impl std::ops::Deref for ModelBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.huge {
            Some(h) => h,
            None => self.map.as_deref().unwrap_or(&[]),
        }
    }
}

/// Maps the model file read-only (an empty file, which cannot be mapped, gives no bytes
/// and then fails as an invalid GGUF file).
pub fn read_file(path: &str) -> Result<ModelBytes, String> {
    let err = |e: std::io::Error| format!("cannot read model file `{path}`: {e}");
    let mut file = std::fs::File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len == 0 {
        return Ok(ModelBytes {
            map: None,
            huge: None,
        });
    }
    if let Some(huge) = usize::try_from(len)
        .ok()
        .and_then(|n| embodios_host::HugePageBytes::read(&mut file, n).ok())
    {
        return Ok(ModelBytes {
            map: None,
            huge: Some(huge),
        });
    }
    // SAFETY: the map is read-only and private to this process; a model file is not
    // written while a model runs (EMBODIOS never writes it, and `fetch-model` replaces
    // files by renaming a finished download, which leaves this mapping on the old
    // inode). Truncating the file from outside while mapped would be a user error that
    // turns into a SIGBUS, as for llama.cpp, which maps model files the same way.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(err)?;
    // Hints only: the weights are all read soon, in no particular order, and huge pages
    // cut TLB misses where the kernel can back a file mapping with them.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::WillNeed);
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(ModelBytes {
        map: Some(map),
        huge: None,
    })
}

pub fn parse<'a>(path: &str, bytes: &'a [u8]) -> Result<GgufFile<'a>, String> {
    GgufFile::parse(bytes).map_err(|e| format!("`{path}` is not a valid GGUF file: {e}"))
}

/// The flags shared by `run` and `chat`: model, threads, context and sampling.
pub const COMMON_VALUED: [Valued; 10] = [
    ("--model", Some("-m")),
    ("--threads", Some("-t")),
    ("--ctx", Some("-c")),
    ("--temp", None),
    ("--top-k", None),
    ("--top-p", None),
    ("--min-p", None),
    ("--repeat-penalty", None),
    ("--seed", Some("-s")),
    ("--max-tokens", Some("-n")),
];

/// A model ready to generate with: borrowed from the file bytes.
pub struct Loaded<'a> {
    pub file: GgufFile<'a>,
    pub model: Model<'a>,
    pub tokenizer: Tokenizer,
}

impl<'a> Loaded<'a> {
    pub fn new(path: &str, bytes: &'a [u8], context: Option<usize>) -> Result<Self, String> {
        let file = parse(path, bytes)?;
        let tokenizer = Tokenizer::from_gguf(&file)
            .map_err(|e| format!("`{path}`: cannot build the tokenizer: {e}"))?;
        let options = ModelOptions {
            max_context: Some(context.unwrap_or(DEFAULT_CONTEXT)),
        };
        let model = Model::load(&file, options).map_err(|e| format!("`{path}`: {e}"))?;
        Ok(Self {
            file,
            model,
            tokenizer,
        })
    }
}

/// Sampling settings from the flags, starting from llama.cpp's defaults.
pub fn sampler_config(a: &Args) -> Result<SamplerConfig, ArgError> {
    let mut c = SamplerConfig::default();
    if let Some(v) = a.parsed("--temp")? {
        c.temperature = v;
    }
    if let Some(v) = a.parsed("--top-k")? {
        c.top_k = v;
    }
    if let Some(v) = a.parsed("--top-p")? {
        c.top_p = v;
    }
    if let Some(v) = a.parsed("--min-p")? {
        c.min_p = v;
    }
    if let Some(v) = a.parsed("--repeat-penalty")? {
        c.repeat_penalty = v;
    }
    if let Some(v) = a.parsed("--seed")? {
        c.seed = v;
    }
    Ok(c)
}

/// The thread count from `--threads`, else every available core.
pub fn thread_pool(a: &Args) -> Result<embodios_host::ThreadPool, String> {
    let pool = match a.parsed::<usize>("--threads").map_err(|e| e.to_string())? {
        Some(0) => return Err("--threads must be at least 1".into()),
        Some(n) => embodios_host::ThreadPool::new(n),
        None => embodios_host::ThreadPool::with_available_parallelism(),
    };
    pool.map_err(|e| format!("cannot start worker threads: {e}"))
}

/// The tokenizer as the generator sees it.
pub struct Detok<'t>(pub &'t Tokenizer);

impl Detokenize for Detok<'_> {
    fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.token_to_piece(id, false));
    }

    fn is_eog(&self, id: u32) -> bool {
        self.0.is_eog(id)
    }
}
