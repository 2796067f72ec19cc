//! The GGUF parser: [`GgufFile::parse`] and lookups on the parsed file.
//!
//! Layout (little-endian throughout): magic `GGUF`, u32 version, u64 tensor count,
//! u64 metadata count; the metadata key/value pairs; the tensor infos (name, u32
//! n_dims, u64 dims, u32 type id, u64 offset); padding up to the alignment; the tensor
//! data, each tensor at its offset from the start of that data section.
//!
//! Every length and count is checked against the bytes that are left before anything
//! is allocated for it, so a hostile count cannot make the parser allocate more than a
//! small multiple of the file size.
//!
//! Choices where ggml leaves room (documented so callers can rely on them):
//! - Tensors with a zero dimension are accepted (like ggml): they have no elements and
//!   an empty data slice, but their offset must still be aligned and inside the file.
//!   A tensor with zero dimensions (`n_dims == 0`) is a scalar of one element.
//! - Tensor offsets must be aligned and in bounds, but need not be laid out back to
//!   back; overlapping tensors are not rejected.
//! - Nested arrays are accepted up to [`MAX_ARRAY_DEPTH`] levels.

use alloc::string::String;
use alloc::vec::Vec;

use crate::{GgmlType, GgufError, Value, ValueType};

/// Most dimensions a tensor can have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Deepest nesting of arrays accepted (an array of scalars is one level). Bounded so
/// that a file of nested empty arrays cannot exhaust the stack of the recursive parser.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// Key of the metadata value that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Smallest encoding of one key/value pair: key length, value type, one byte of value.
const MIN_KV_LEN: u64 = 8 + 4 + 1;
/// Smallest encoding of one tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_LEN: u64 = 8 + 4 + 4 + 8;

/// One tensor of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    /// Dimensions, contiguous one first (ggml's `ne[0]`, `ne[1]`, …).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the tensor-data section.
    pub offset: u64,
    /// The tensor's bytes, borrowed from the file.
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// Number of elements (the product of the dims; 1 for a tensor without dims).
    pub fn n_elements(&self) -> u64 {
        // The parser guarantees no overflow; saturate for hand-built values.
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Elements in one row (`dims[0]`, or 1 for a tensor without dims).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (the product of all dims but the first).
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Bytes of one row in the tensor's type.
    pub fn row_bytes(&self) -> u64 {
        self.ty.bytes_for(self.row_len()).unwrap_or(0)
    }
}

/// A parsed GGUF file.
#[derive(Clone, Debug)]
pub struct GgufFile<'a> {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(&'a str, Value<'a>)>,
    pub tensors: Vec<TensorInfo<'a>>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// Offset of the tensor-data section in the file.
    pub data_offset: u64,
    /// Indices into `metadata`, sorted by key, for binary search.
    key_index: Vec<usize>,
    /// Indices into `tensors`, sorted by name, for binary search.
    tensor_index: Vec<usize>,
}

impl<'a> GgufFile<'a> {
    /// Parses a whole GGUF file held in memory. Never panics; any malformed input
    /// gives a [`GgufError`] naming the offset and what was being read.
    pub fn parse(bytes: &'a [u8]) -> Result<GgufFile<'a>, GgufError> {
        let mut c = Cursor { bytes, pos: 0 };

        let magic: [u8; 4] = c.array("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version_at = c.offset();
        let version = c.u32("version")?;
        if !matches!(version, 2 | 3) {
            return Err(GgufError::UnsupportedVersion {
                offset: version_at,
                version,
            });
        }
        let tensor_count_at = c.offset();
        let tensor_count = c.u64("tensor count")?;
        let kv_count_at = c.offset();
        let kv_count = c.u64("metadata count")?;

        let n_kv = c.bound(kv_count, MIN_KV_LEN, "metadata count", kv_count_at)?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut key_offsets = Vec::with_capacity(n_kv);
        let mut alignment_type_at = None;
        for _ in 0..n_kv {
            let key_at = c.offset();
            let key_bytes = c.string("metadata key")?;
            if key_bytes.is_empty() {
                return Err(GgufError::EmptyKey { offset: key_at });
            }
            let key = core::str::from_utf8(key_bytes).map_err(|_| GgufError::InvalidUtf8 {
                offset: key_at + 8,
                what: "metadata key",
            })?;
            let type_at = c.offset();
            let type_id = c.u32("value type")?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                offset: type_at,
                key: key.into(),
                type_id,
            })?;
            let value = read_value(&mut c, ty, key, 0)?;
            if key == ALIGNMENT_KEY {
                alignment_type_at = Some(type_at);
            }
            metadata.push((key, value));
            key_offsets.push(key_at);
        }

        let key_index = sorted_index(metadata.len(), |i| metadata[i].0);
        if let Some(i) = first_duplicate(&key_index, |i| metadata[i].0) {
            return Err(GgufError::DuplicateKey {
                offset: key_offsets[i],
                key: metadata[i].0.into(),
            });
        }

        let mut alignment = u64::from(DEFAULT_ALIGNMENT);
        if let Some(type_at) = alignment_type_at {
            let value = metadata
                .iter()
                .find(|(k, _)| *k == ALIGNMENT_KEY)
                .map(|(_, v)| v);
            match value {
                Some(Value::U32(a)) if a.is_power_of_two() => alignment = u64::from(*a),
                Some(Value::U32(a)) => {
                    return Err(GgufError::BadAlignment {
                        offset: type_at + 4,
                        alignment: u64::from(*a),
                    })
                }
                other => {
                    return Err(GgufError::AlignmentNotU32 {
                        offset: type_at,
                        found: other.map_or("nothing", Value::type_name),
                    })
                }
            }
        }

        let n_tensors = c.bound(
            tensor_count,
            MIN_TENSOR_INFO_LEN,
            "tensor count",
            tensor_count_at,
        )?;
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            raw.push(read_tensor_info(&mut c)?);
        }

        let tensor_index = sorted_index(raw.len(), |i| raw[i].name);
        if let Some(i) = first_duplicate(&tensor_index, |i| raw[i].name) {
            return Err(GgufError::DuplicateTensor {
                offset: raw[i].name_at,
                tensor: raw[i].name.into(),
            });
        }

        let header_end = c.offset();
        let data_offset = align_up(header_end, alignment).ok_or(GgufError::SizeOverflow {
            offset: header_end,
            what: "aligned start of the tensor data",
        })?;
        let file_len = bytes.len() as u64;

        let mut tensors = Vec::with_capacity(raw.len());
        for t in raw {
            if !t.offset.is_multiple_of(alignment) {
                return Err(GgufError::MisalignedTensor {
                    offset: t.offset_at,
                    tensor: t.name.into(),
                    data_offset: t.offset,
                    alignment,
                });
            }
            let n_elements = t.dims.iter().product::<u64>();
            // `read_tensor_info` checked that the row is whole blocks and the count
            // fits in an i64; only the byte count can still overflow.
            let size = t.ty.bytes_for(n_elements).ok_or(GgufError::SizeOverflow {
                offset: t.type_at,
                what: "tensor byte size",
            })?;
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(size));
            let data = match (start, end) {
                (Some(s), Some(e)) if e <= file_len => bytes.get(s as usize..e as usize),
                _ => None,
            };
            let data = data.ok_or_else(|| GgufError::TensorOutOfBounds {
                offset: t.offset_at,
                tensor: t.name.into(),
                start: data_offset.saturating_add(t.offset),
                size,
                file_len,
            })?;
            tensors.push(TensorInfo {
                name: t.name,
                dims: t.dims,
                ty: t.ty,
                offset: t.offset,
                data,
            });
        }

        Ok(GgufFile {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            key_index,
            tensor_index,
        })
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        let pos = self
            .key_index
            .binary_search_by(|&i| {
                self.metadata
                    .get(i)
                    .map_or(core::cmp::Ordering::Less, |(k, _)| (*k).cmp(key))
            })
            .ok()?;
        let (k, v) = self.metadata.get(*self.key_index.get(pos)?)?;
        // The index is private but the fields are public: stay correct if a caller
        // has edited `metadata`.
        if *k == key {
            Some(v)
        } else {
            self.metadata
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        }
    }

    /// The string under `key`, if it is a string and valid UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        self.get(key)?.as_str()
    }

    /// The integer under `key`, if it is an integer of any width that fits a `u32`.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u32()
    }

    /// The integer under `key`, if it is an integer of any width that fits a `u64`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// The integer under `key`, if it is an integer of any width that fits an `i64`.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// The float under `key` (`float32` or `float64`).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_array(&self, key: &str) -> Option<&[Value<'a>]> {
        self.get(key)?.as_array()
    }

    /// `general.architecture` (`"llama"`, `"gemma3"`, …).
    pub fn architecture(&self) -> Option<&'a str> {
        self.get_str("general.architecture")
    }

    /// The tensor named `name` (binary search over a sorted index).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        let pos = self
            .tensor_index
            .binary_search_by(|&i| {
                self.tensors
                    .get(i)
                    .map_or(core::cmp::Ordering::Less, |t| t.name.cmp(name))
            })
            .ok()?;
        let t = self.tensors.get(*self.tensor_index.get(pos)?)?;
        if t.name == name {
            Some(t)
        } else {
            self.tensors.iter().find(|t| t.name == name)
        }
    }
}

/// A tensor info as read, before its data slice is located.
struct RawTensor<'a> {
    name: &'a str,
    name_at: u64,
    dims: Vec<u64>,
    ty: GgmlType,
    type_at: u64,
    offset: u64,
    offset_at: u64,
}

fn read_tensor_info<'a>(c: &mut Cursor<'a>) -> Result<RawTensor<'a>, GgufError> {
    let name_at = c.offset();
    let name_bytes = c.string("tensor name")?;
    let name = core::str::from_utf8(name_bytes).map_err(|_| GgufError::InvalidUtf8 {
        offset: name_at + 8,
        what: "tensor name",
    })?;
    let n_dims_at = c.offset();
    let n_dims = c.u32("tensor dimension count")?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            offset: n_dims_at,
            tensor: name.into(),
            n_dims,
        });
    }
    let dims_at = c.offset();
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64("tensor dimension")?);
    }
    // ggml stores dims and element counts as i64: larger values are negative there.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok() && dims.iter().all(|&d| i64::try_from(d).is_ok()));
    if n_elements.is_none() {
        return Err(GgufError::DimsOverflow {
            offset: dims_at,
            tensor: name.into(),
            dims,
        });
    }
    let type_at = c.offset();
    let type_id = c.u32("tensor type")?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        offset: type_at,
        tensor: name.into(),
        type_id,
    })?;
    let row_len = dims.first().copied().unwrap_or(1);
    if !row_len.is_multiple_of(ty.block_elems() as u64) {
        return Err(GgufError::BadRowLength {
            offset: dims_at,
            tensor: name.into(),
            ty,
            row_len,
        });
    }
    let offset_at = c.offset();
    let offset = c.u64("tensor data offset")?;
    Ok(RawTensor {
        name,
        name_at,
        dims,
        ty,
        type_at,
        offset,
        offset_at,
    })
}

/// Reads one value of type `ty`; `depth` is the number of arrays around it.
fn read_value<'a>(
    c: &mut Cursor<'a>,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value<'a>, GgufError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>("uint8 value")?[0]),
        ValueType::I8 => Value::I8(i8::from_le_bytes(c.array("int8 value")?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array("uint16 value")?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array("int16 value")?)),
        ValueType::U32 => Value::U32(c.u32("uint32 value")?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array("int32 value")?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array("float32 value")?)),
        ValueType::U64 => Value::U64(c.u64("uint64 value")?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array("int64 value")?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array("float64 value")?)),
        ValueType::Bool => {
            let at = c.offset();
            match c.array::<1>("bool value")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte => {
                    return Err(GgufError::BadBool {
                        offset: at,
                        key: key.into(),
                        byte,
                    })
                }
            }
        }
        ValueType::Str => Value::Str(c.string("string value")?),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep {
                    offset: c.offset(),
                    key: key.into(),
                });
            }
            let type_at = c.offset();
            let type_id = c.u32("array element type")?;
            let elem = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                offset: type_at,
                key: String::from(key),
                type_id,
            })?;
            let count_at = c.offset();
            let count = c.u64("array length")?;
            let n = c
                .bound(count, elem.min_encoded_len(), "array length", count_at)
                .map_err(|e| match e {
                    GgufError::CountTooLarge { count, max, .. } => GgufError::ArrayTooLong {
                        offset: count_at,
                        key: key.into(),
                        count,
                        max,
                    },
                    other => other,
                })?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, elem, key, depth + 1)?);
            }
            Value::Array(items)
        }
    })
}

/// `0..len` sorted by `key(i)`, ties in index order (the sort is stable).
fn sorted_index<'k>(len: usize, key: impl Fn(usize) -> &'k str) -> Vec<usize> {
    let mut index: Vec<usize> = (0..len).collect();
    index.sort_by(|&a, &b| key(a).cmp(key(b)));
    index
}

/// The later (in file order) of the first pair of equal keys in a sorted index.
fn first_duplicate<'k>(index: &[usize], key: impl Fn(usize) -> &'k str) -> Option<usize> {
    index
        .windows(2)
        .filter(|w| key(w[0]) == key(w[1]))
        .map(|w| w[1])
        .min()
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? & !(alignment - 1))
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        self.bytes.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let truncated = GgufError::Truncated {
            offset: self.offset(),
            needed: n,
            what,
        };
        if n > self.remaining() {
            return Err(truncated);
        }
        let end = self.pos + n as usize;
        let s = self.bytes.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let at = self.offset();
        self.take(N as u64, what)?
            .try_into()
            .map_err(|_| GgufError::Truncated {
                offset: at,
                needed: N as u64,
                what,
            })
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A string: u64 length then that many bytes.
    fn string(&mut self, what: &'static str) -> Result<&'a [u8], GgufError> {
        let len = self.u64(what)?;
        self.take(len, what)
    }

    /// Checks that `count` items of at least `min_len` bytes each can fit in the bytes
    /// left, so that allocating room for them is bounded by the file size.
    fn bound(
        &self,
        count: u64,
        min_len: u64,
        what: &'static str,
        at: u64,
    ) -> Result<usize, GgufError> {
        let max = self.remaining() / min_len;
        if count > max {
            return Err(GgufError::CountTooLarge {
                offset: at,
                what,
                count,
                max,
            });
        }
        usize::try_from(count).map_err(|_| GgufError::SizeOverflow { offset: at, what })
    }
}
