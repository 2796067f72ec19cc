//! GGUF model files: a zero-copy, bounds-checked reader and a small writer for fixtures.
//!
//! API contract (the other crates code against it):
//! - [`GgufFile::parse`] takes any byte string and returns a parsed file or a typed
//!   [`GgufError`] with the offset where the problem is; it never panics.
//! - Strings and tensor data are borrowed from the input bytes.
//! - [`GgufWriter`] builds files that parse back to the same metadata and tensors.
//!
//! Only little-endian files of versions 2 and 3 are read (version 1 is obsolete and
//! big-endian files are rare); see [`reader`] for the choices made where the format
//! leaves room.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod error;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use error::{GgufError, WriteError};
pub use reader::{
    GgufFile, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS,
};
pub use types::{GgmlType, QK_K};
pub use value::{OwnedValue, Value, ValueType};
pub use writer::GgufWriter;
