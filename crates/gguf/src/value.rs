//! Metadata values: the on-disk type ids, the borrowed [`Value`] the parser returns
//! and the owned [`OwnedValue`] the writer takes.

use alloc::string::String;
use alloc::vec::Vec;

/// The type id stored before every metadata value (and array element type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    Str = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type with on-disk id `id`, if there is one.
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name the GGUF specification uses (`"uint32"`, `"string"`, …).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            U32 => "uint32",
            I32 => "int32",
            F32 => "float32",
            Bool => "bool",
            Str => "string",
            Array => "array",
            U64 => "uint64",
            I64 => "int64",
            F64 => "float64",
        }
    }

    /// The fewest bytes one value of this type can take on disk: its size for
    /// scalars, the length prefix for strings, the element type and count for arrays.
    /// Used to bound counts by the bytes left before allocating anything.
    pub(crate) fn min_encoded_len(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | Str => 8,
            Array => 12,
        }
    }
}

/// A metadata value, borrowing strings from the file.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    /// Raw bytes of the string; GGUF promises UTF-8 but a reader must not trust it.
    Str(&'a [u8]),
    /// The elements all have one type (an empty array's element type is not kept).
    Array(Vec<Value<'a>>),
}

impl<'a> Value<'a> {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Str,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// The GGUF name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        self.value_type().name()
    }

    /// The string, if this is a string and it is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.as_bytes()?).ok()
    }

    /// The raw bytes of a string value.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Str(b) => Some(b),
            _ => None,
        }
    }

    /// Any integer value that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any integer value that fits in a `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// A float value (`float64` is rounded to the nearest `f32`).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }

    /// An owned copy, or `None` if some string in it is not UTF-8 (the writer
    /// only writes valid strings).
    pub fn to_owned_value(&self) -> Option<OwnedValue> {
        Some(match self {
            Value::U8(v) => OwnedValue::U8(*v),
            Value::I8(v) => OwnedValue::I8(*v),
            Value::U16(v) => OwnedValue::U16(*v),
            Value::I16(v) => OwnedValue::I16(*v),
            Value::U32(v) => OwnedValue::U32(*v),
            Value::I32(v) => OwnedValue::I32(*v),
            Value::U64(v) => OwnedValue::U64(*v),
            Value::I64(v) => OwnedValue::I64(*v),
            Value::F32(v) => OwnedValue::F32(*v),
            Value::F64(v) => OwnedValue::F64(*v),
            Value::Bool(v) => OwnedValue::Bool(*v),
            Value::Str(_) => OwnedValue::Str(self.as_str()?.into()),
            Value::Array(items) => OwnedValue::Array(
                items
                    .iter()
                    .map(Value::to_owned_value)
                    .collect::<Option<Vec<_>>>()?,
            ),
        })
    }
}

/// A metadata value for [`crate::GgufWriter`]: [`Value`] with owned strings and arrays.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    /// All elements must have one type; an empty array is written as an array of `uint8`.
    Array(Vec<OwnedValue>),
}

impl OwnedValue {
    pub fn str(s: &str) -> Self {
        OwnedValue::Str(s.into())
    }

    pub fn str_array<S: AsRef<str>>(items: &[S]) -> Self {
        OwnedValue::Array(items.iter().map(|s| Self::str(s.as_ref())).collect())
    }

    pub fn f32_array(items: &[f32]) -> Self {
        OwnedValue::Array(items.iter().map(|&v| OwnedValue::F32(v)).collect())
    }

    pub fn i32_array(items: &[i32]) -> Self {
        OwnedValue::Array(items.iter().map(|&v| OwnedValue::I32(v)).collect())
    }

    pub fn u32_array(items: &[u32]) -> Self {
        OwnedValue::Array(items.iter().map(|&v| OwnedValue::U32(v)).collect())
    }

    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            OwnedValue::U8(_) => ValueType::U8,
            OwnedValue::I8(_) => ValueType::I8,
            OwnedValue::U16(_) => ValueType::U16,
            OwnedValue::I16(_) => ValueType::I16,
            OwnedValue::U32(_) => ValueType::U32,
            OwnedValue::I32(_) => ValueType::I32,
            OwnedValue::U64(_) => ValueType::U64,
            OwnedValue::I64(_) => ValueType::I64,
            OwnedValue::F32(_) => ValueType::F32,
            OwnedValue::F64(_) => ValueType::F64,
            OwnedValue::Bool(_) => ValueType::Bool,
            OwnedValue::Str(_) => ValueType::Str,
            OwnedValue::Array(_) => ValueType::Array,
        }
    }

    /// A borrowed view, as the parser would return it after a round trip.
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::U8(v) => Value::U8(*v),
            OwnedValue::I8(v) => Value::I8(*v),
            OwnedValue::U16(v) => Value::U16(*v),
            OwnedValue::I16(v) => Value::I16(*v),
            OwnedValue::U32(v) => Value::U32(*v),
            OwnedValue::I32(v) => Value::I32(*v),
            OwnedValue::U64(v) => Value::U64(*v),
            OwnedValue::I64(v) => Value::I64(*v),
            OwnedValue::F32(v) => Value::F32(*v),
            OwnedValue::F64(v) => Value::F64(*v),
            OwnedValue::Bool(v) => Value::Bool(*v),
            OwnedValue::Str(s) => Value::Str(s.as_bytes()),
            OwnedValue::Array(items) => Value::Array(items.iter().map(Self::as_value).collect()),
        }
    }
}
