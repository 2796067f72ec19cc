//! Typed errors for reading ([`GgufError`]) and writing ([`WriteError`]) GGUF files.
//!
//! Every parse error carries the byte offset in the file where the problem was found,
//! so a bad file can be inspected with a hex dump; `Display` starts with that offset.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::GgmlType;

/// Why a byte string is not a GGUF file this crate accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgufError {
    /// The first four bytes are not `GGUF`.
    BadMagic { found: [u8; 4] },
    /// A version other than 2 or 3 (version 1 used 32-bit counts and is obsolete).
    UnsupportedVersion { offset: u64, version: u32 },
    /// The file ends before `needed` bytes of `what` could be read at `offset`.
    Truncated {
        offset: u64,
        needed: u64,
        what: &'static str,
    },
    /// A count says more items follow than the rest of the file can possibly hold,
    /// even at the smallest encoding of each item (`max` is that upper bound).
    CountTooLarge {
        offset: u64,
        what: &'static str,
        count: u64,
        max: u64,
    },
    /// An array of key `key` claims more elements than the rest of the file can hold.
    ArrayTooLong {
        offset: u64,
        key: String,
        count: u64,
        max: u64,
    },
    /// A key or tensor name is not UTF-8.
    InvalidUtf8 { offset: u64, what: &'static str },
    /// A metadata key of length zero.
    EmptyKey { offset: u64 },
    /// The same metadata key appears twice.
    DuplicateKey { offset: u64, key: String },
    /// A value (or array element) type id outside 0..=12.
    UnknownValueType {
        offset: u64,
        key: String,
        type_id: u32,
    },
    /// A bool stored as a byte other than 0 or 1.
    BadBool { offset: u64, key: String, byte: u8 },
    /// Arrays nested deeper than [`crate::MAX_ARRAY_DEPTH`].
    NestingTooDeep { offset: u64, key: String },
    /// `general.alignment` is present but not a `uint32`.
    AlignmentNotU32 { offset: u64, found: &'static str },
    /// `general.alignment` is zero or not a power of two.
    BadAlignment { offset: u64, alignment: u64 },
    /// The same tensor name appears twice.
    DuplicateTensor { offset: u64, tensor: String },
    /// More than [`crate::MAX_DIMS`] dimensions.
    TooManyDims {
        offset: u64,
        tensor: String,
        n_dims: u32,
    },
    /// A tensor type id no ggml version assigned.
    UnknownTensorType {
        offset: u64,
        tensor: String,
        type_id: u32,
    },
    /// The dimensions' product (or one dimension) does not fit in an `i64`.
    DimsOverflow {
        offset: u64,
        tensor: String,
        dims: Vec<u64>,
    },
    /// The row length (`dims[0]`) is not a whole number of blocks of the tensor type.
    BadRowLength {
        offset: u64,
        tensor: String,
        ty: GgmlType,
        row_len: u64,
    },
    /// The tensor's data offset is not a multiple of the file's alignment.
    MisalignedTensor {
        offset: u64,
        tensor: String,
        data_offset: u64,
        alignment: u64,
    },
    /// The tensor's bytes run past the end of the file.
    TensorOutOfBounds {
        offset: u64,
        tensor: String,
        start: u64,
        size: u64,
        file_len: u64,
    },
    /// An offset or size computation overflowed 64 bits (or the address space).
    SizeOverflow { offset: u64, what: &'static str },
}

impl GgufError {
    /// The byte offset in the file where the problem was found.
    pub fn offset(&self) -> u64 {
        use GgufError::*;
        match self {
            BadMagic { .. } => 0,
            UnsupportedVersion { offset, .. }
            | Truncated { offset, .. }
            | CountTooLarge { offset, .. }
            | ArrayTooLong { offset, .. }
            | InvalidUtf8 { offset, .. }
            | EmptyKey { offset }
            | DuplicateKey { offset, .. }
            | UnknownValueType { offset, .. }
            | BadBool { offset, .. }
            | NestingTooDeep { offset, .. }
            | AlignmentNotU32 { offset, .. }
            | BadAlignment { offset, .. }
            | DuplicateTensor { offset, .. }
            | TooManyDims { offset, .. }
            | UnknownTensorType { offset, .. }
            | DimsOverflow { offset, .. }
            | BadRowLength { offset, .. }
            | MisalignedTensor { offset, .. }
            | TensorOutOfBounds { offset, .. }
            | SizeOverflow { offset, .. } => *offset,
        }
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufError::*;
        write!(f, "offset {}: ", self.offset())?;
        match self {
            BadMagic { found } => write!(
                f,
                "not a GGUF file (magic bytes {:02x} {:02x} {:02x} {:02x}, expected `GGUF`)",
                found[0], found[1], found[2], found[3]
            ),
            UnsupportedVersion { version, .. } => {
                write!(
                    f,
                    "GGUF version {version} is not supported (only versions 2 and 3)"
                )?;
                if *version == 1 {
                    f.write_str("; version 1 files must be converted with a current llama.cpp")?;
                } else if matches!(version.swap_bytes(), 2 | 3) {
                    f.write_str("; this looks like a big-endian GGUF file, which is not supported")?;
                }
                Ok(())
            }
            Truncated { needed, what, .. } => {
                write!(f, "file ends while reading {what} ({needed} bytes needed)")
            }
            CountTooLarge {
                what, count, max, ..
            } => write!(
                f,
                "{what} {count} is larger than the rest of the file can hold (at most {max})"
            ),
            ArrayTooLong {
                key, count, max, ..
            } => write!(
                f,
                "array of key `{key}` claims {count} elements but the rest of the file can hold at most {max}"
            ),
            InvalidUtf8 { what, .. } => write!(f, "{what} is not valid UTF-8"),
            EmptyKey { .. } => f.write_str("metadata key is empty"),
            DuplicateKey { key, .. } => write!(f, "metadata key `{key}` appears twice"),
            UnknownValueType { key, type_id, .. } => {
                write!(f, "key `{key}` has unknown value type id {type_id}")
            }
            BadBool { key, byte, .. } => {
                write!(f, "key `{key}` has a bool byte {byte} (must be 0 or 1)")
            }
            NestingTooDeep { key, .. } => write!(
                f,
                "key `{key}` nests arrays deeper than {} levels",
                crate::MAX_ARRAY_DEPTH
            ),
            AlignmentNotU32 { found, .. } => {
                write!(f, "`general.alignment` has type {found}, expected uint32")
            }
            BadAlignment { alignment, .. } => write!(
                f,
                "`general.alignment` is {alignment}, which is not a nonzero power of two"
            ),
            DuplicateTensor { tensor, .. } => write!(f, "tensor `{tensor}` appears twice"),
            TooManyDims { tensor, n_dims, .. } => write!(
                f,
                "tensor `{tensor}` has {n_dims} dimensions (at most {})",
                crate::MAX_DIMS
            ),
            UnknownTensorType {
                tensor, type_id, ..
            } => write!(f, "tensor `{tensor}` has unknown type id {type_id}"),
            DimsOverflow { tensor, dims, .. } => write!(
                f,
                "tensor `{tensor}` has dimensions {dims:?} whose element count does not fit in an i64"
            ),
            BadRowLength {
                tensor, ty, row_len, ..
            } => write!(
                f,
                "tensor `{tensor}` of type {ty} has row length {row_len}, not a multiple of its block size {}",
                ty.block_elems()
            ),
            MisalignedTensor {
                tensor,
                data_offset,
                alignment,
                ..
            } => write!(
                f,
                "tensor `{tensor}` has data offset {data_offset}, not a multiple of the alignment {alignment}"
            ),
            TensorOutOfBounds {
                tensor,
                start,
                size,
                file_len,
                ..
            } => write!(
                f,
                "tensor `{tensor}` needs bytes {start}..{} but the file is {file_len} bytes long",
                start.saturating_add(*size)
            ),
            SizeOverflow { what, .. } => write!(f, "{what} overflows"),
        }
    }
}

impl core::error::Error for GgufError {}

/// Why [`crate::GgufWriter`] refused an item: the writer only produces files that
/// [`crate::GgufFile::parse`] accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// Only versions 2 and 3 can be written.
    UnsupportedVersion {
        version: u32,
    },
    /// The alignment is zero or not a power of two.
    BadAlignment {
        alignment: u64,
    },
    /// `general.alignment` given as something other than `OwnedValue::U32`.
    AlignmentNotU32 {
        found: &'static str,
    },
    EmptyKey,
    DuplicateKey {
        key: String,
    },
    /// An array whose elements are not all of one type.
    MixedArray {
        key: String,
    },
    /// Arrays nested deeper than [`crate::MAX_ARRAY_DEPTH`].
    NestingTooDeep {
        key: String,
    },
    DuplicateTensor {
        name: String,
    },
    TooManyDims {
        name: String,
        n_dims: usize,
    },
    /// The element count does not fit in an `i64`.
    DimsOverflow {
        name: String,
    },
    /// `dims[0]` is not a whole number of blocks of the type.
    BadRowLength {
        name: String,
        ty: GgmlType,
        row_len: u64,
    },
    /// The data is not exactly as long as the dims and type require.
    DataLength {
        name: String,
        expected: u64,
        actual: usize,
    },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use WriteError::*;
        match self {
            UnsupportedVersion { version } => {
                write!(f, "cannot write GGUF version {version} (only 2 and 3)")
            }
            BadAlignment { alignment } => {
                write!(f, "alignment {alignment} is not a nonzero power of two")
            }
            AlignmentNotU32 { found } => {
                write!(f, "`general.alignment` must be a uint32, got {found}")
            }
            EmptyKey => f.write_str("metadata key is empty"),
            DuplicateKey { key } => write!(f, "metadata key `{key}` added twice"),
            MixedArray { key } => write!(f, "array for key `{key}` mixes element types"),
            NestingTooDeep { key } => write!(
                f,
                "key `{key}` nests arrays deeper than {} levels",
                crate::MAX_ARRAY_DEPTH
            ),
            DuplicateTensor { name } => write!(f, "tensor `{name}` added twice"),
            TooManyDims { name, n_dims } => write!(
                f,
                "tensor `{name}` has {n_dims} dimensions (at most {})",
                crate::MAX_DIMS
            ),
            DimsOverflow { name } => {
                write!(f, "tensor `{name}` has an element count that overflows i64")
            }
            BadRowLength { name, ty, row_len } => write!(
                f,
                "tensor `{name}` of type {ty} has row length {row_len}, not a multiple of {}",
                ty.block_elems()
            ),
            DataLength {
                name,
                expected,
                actual,
            } => write!(
                f,
                "tensor `{name}` needs {expected} bytes of data, got {actual}"
            ),
        }
    }
}

impl core::error::Error for WriteError {}
