//! A small GGUF writer, for test fixtures and tiny generated models.
//!
//! It checks every item as it is added, so that whatever [`GgufWriter::finish`]
//! returns is accepted by [`crate::GgufFile::parse`] and parses back to the same
//! metadata and tensors. Tensor data is laid out in the order added, each tensor
//! padded with zeros to the alignment (the last one too, as ggml does).

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use crate::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::{GgmlType, OwnedValue, ValueType, WriteError};

/// Builds a GGUF file in memory.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    alignment: u32,
    metadata: Vec<(String, OwnedValue)>,
    keys: BTreeSet<String>,
    tensors: Vec<PendingTensor>,
    names: BTreeSet<String>,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty version-3 file with the default alignment of 32.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            keys: BTreeSet::new(),
            tensors: Vec::new(),
            names: BTreeSet::new(),
        }
    }

    /// Writes version 2 or 3 (the two have the same little-endian layout).
    pub fn set_version(&mut self, version: u32) -> Result<(), WriteError> {
        if !matches!(version, 2 | 3) {
            return Err(WriteError::UnsupportedVersion { version });
        }
        self.version = version;
        Ok(())
    }

    /// Sets the tensor-data alignment, stored as the `general.alignment` metadata value
    /// (added, or replaced where it already is).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), WriteError> {
        if !alignment.is_power_of_two() {
            return Err(WriteError::BadAlignment {
                alignment: alignment.into(),
            });
        }
        self.alignment = alignment;
        let value = OwnedValue::U32(alignment);
        match self.metadata.iter_mut().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some(entry) => entry.1 = value,
            None => {
                self.keys.insert(ALIGNMENT_KEY.into());
                self.metadata.push((ALIGNMENT_KEY.into(), value));
            }
        }
        Ok(())
    }

    /// Adds a key/value pair. Adding `general.alignment` (as a `U32`) sets the
    /// alignment like [`Self::set_alignment`].
    pub fn add_metadata(&mut self, key: &str, value: OwnedValue) -> Result<(), WriteError> {
        if key.is_empty() {
            return Err(WriteError::EmptyKey);
        }
        if self.keys.contains(key) {
            return Err(WriteError::DuplicateKey { key: key.into() });
        }
        check_value(&value, key, 0)?;
        if key == ALIGNMENT_KEY {
            match value {
                OwnedValue::U32(a) if a.is_power_of_two() => self.alignment = a,
                OwnedValue::U32(a) => {
                    return Err(WriteError::BadAlignment {
                        alignment: a.into(),
                    })
                }
                other => {
                    return Err(WriteError::AlignmentNotU32 {
                        found: other.value_type().name(),
                    })
                }
            }
        }
        self.keys.insert(key.into());
        self.metadata.push((key.into(), value));
        Ok(())
    }

    /// Adds a tensor; `data` must be exactly the bytes `dims` of type `ty` take.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), WriteError> {
        if self.names.contains(name) {
            return Err(WriteError::DuplicateTensor { name: name.into() });
        }
        if dims.len() > MAX_DIMS {
            return Err(WriteError::TooManyDims {
                name: name.into(),
                n_dims: dims.len(),
            });
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok() && dims.iter().all(|&d| i64::try_from(d).is_ok()))
            .ok_or_else(|| WriteError::DimsOverflow { name: name.into() })?;
        let row_len = dims.first().copied().unwrap_or(1);
        if !row_len.is_multiple_of(ty.block_elems() as u64) {
            return Err(WriteError::BadRowLength {
                name: name.into(),
                ty,
                row_len,
            });
        }
        let expected = ty
            .bytes_for(n_elements)
            .ok_or_else(|| WriteError::DimsOverflow { name: name.into() })?;
        if data.len() as u64 != expected {
            return Err(WriteError::DataLength {
                name: name.into(),
                expected,
                actual: data.len(),
            });
        }
        self.names.insert(name.into());
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(())
    }

    /// The file's bytes.
    pub fn finish(self) -> Vec<u8> {
        let align = self.alignment as usize;
        let padded = |n: usize| n.div_ceil(align) * align;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_str(&mut out, key);
            out.extend_from_slice(&value.value_type().id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += padded(t.data.len());
        }
        out.resize(padded(out.len()), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(padded(out.len()), 0);
        }
        out
    }
}

/// Rejects what the parser would reject: mixed-type arrays and too-deep nesting.
fn check_value(value: &OwnedValue, key: &str, depth: usize) -> Result<(), WriteError> {
    if let OwnedValue::Array(items) = value {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(WriteError::NestingTooDeep { key: key.into() });
        }
        if let Some(first) = items.first() {
            let ty = first.value_type();
            if items.iter().any(|v| v.value_type() != ty) {
                return Err(WriteError::MixedArray { key: key.into() });
            }
        }
        for item in items {
            check_value(item, key, depth + 1)?;
        }
    }
    Ok(())
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &OwnedValue) {
    match value {
        OwnedValue::U8(v) => out.push(*v),
        OwnedValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::Bool(v) => out.push(u8::from(*v)),
        OwnedValue::Str(s) => write_str(out, s),
        OwnedValue::Array(items) => {
            // An empty array has no element to take the type from; any type reads back
            // as the same empty array.
            let elem = items.first().map_or(ValueType::U8, OwnedValue::value_type);
            out.extend_from_slice(&elem.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}
