//! Reads GGUF files (versions 2 and 3): the metadata key/value table, the tensor directory and
//! memory-mapped tensor data. Every length and offset is checked against the file before use,
//! so a truncated or corrupted file is an error, never a panic or a huge allocation.

use crate::error::{ModelError, Result};
use crate::tensor::{DType, MappedFile, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) if v >= 0 => Some(v as u64),
            GgufValue::I16(v) if v >= 0 => Some(v as u64),
            GgufValue::I32(v) if v >= 0 => Some(v as u64),
            GgufValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGML tensor type ids this build can compute with.
fn ggml_dtype(t: u32) -> Option<DType> {
    match t {
        0 => Some(DType::F32),
        1 => Some(DType::F16),
        30 => Some(DType::BF16),
        t => mideum_kernels::QuantType::from_ggml_type(t).map(DType::Quant),
    }
}

fn ggml_type_name(t: u32) -> &'static str {
    match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        30 => "BF16",
        _ => "unknown",
    }
}

#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, GgufValue>,
    pub tensor_infos: Vec<GgufTensorInfo>,
    data_start: usize,
    file: Arc<MappedFile>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                ModelError::format(
                    self.path,
                    format!(
                        "unexpected end of file at byte {} (truncated GGUF?)",
                        self.pos
                    ),
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    /// A count that must fit in the remaining bytes at `min_size` bytes per item.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let n = self.u64()?;
        let remaining = (self.b.len() - self.pos) as u64;
        if n.saturating_mul(min_size.max(1) as u64) > remaining {
            return Err(ModelError::format(
                self.path,
                format!("{what} count {n} does not fit in the file (corrupted GGUF?)"),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1, "string length")?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| {
            ModelError::format(
                self.path,
                format!("invalid UTF-8 in a string at byte {}", self.pos - n),
            )
        })
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.u8()?),
            1 => GgufValue::I8(self.u8()? as i8),
            2 => GgufValue::U16(self.u16()?),
            3 => GgufValue::I16(self.u16()? as i16),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(self.u32()? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32()?)),
            7 => GgufValue::Bool(self.u8()? != 0),
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(ModelError::format(self.path, "arrays nested too deeply"));
                }
                let et = self.u32()?;
                let n = self.count(1, "array")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(et, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(self.u64()? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64()?)),
            t => {
                return Err(ModelError::format(
                    self.path,
                    format!("unknown metadata value type {t} at byte {}", self.pos),
                ))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = MappedFile::open(path)?;
        let b = file.bytes();
        let mut c = Cursor { b, pos: 0, path };
        if c.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(ModelError::format(
                path,
                "not a GGUF file (missing GGUF magic)",
            ));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::format(
                path,
                format!("GGUF version {version} is not supported (expected 2 or 3)"),
            ));
        }
        let n_tensors = c.count(24, "tensor")?;
        let n_kv = c.count(13, "metadata")?;
        let mut metadata = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let mut tensor_infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            if nd == 0 || nd > 4 {
                return Err(ModelError::format(
                    path,
                    format!("tensor {name}: {nd} dimensions (expected 1 to 4)"),
                ));
            }
            let dims = (0..nd).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            tensor_infos.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(|v| v.as_u64())
            .unwrap_or(32) as usize;
        if align == 0 || !align.is_power_of_two() {
            return Err(ModelError::format(
                path,
                format!("general.alignment {align} is not a power of two"),
            ));
        }
        let data_start = c.pos.div_ceil(align) * align;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensor_infos,
            data_start,
            file,
        })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(|v| v.as_str())
    }

    /// Maps every tensor, checking type, size and bounds.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let len = self.file.bytes().len();
        let mut out = HashMap::with_capacity(self.tensor_infos.len());
        for t in &self.tensor_infos {
            let dtype = ggml_dtype(t.ggml_type).ok_or_else(|| {
                ModelError::tensor(
                    &t.name,
                    format!(
                        "GGML type {} ({}) is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K are)",
                        t.ggml_type,
                        ggml_type_name(t.ggml_type)
                    ),
                )
            })?;
            let numel = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| ModelError::tensor(&t.name, "shape overflows"))?;
            if let DType::Quant(q) = dtype {
                if !t.dims[0].is_multiple_of(q.block_elems() as u64) {
                    return Err(ModelError::tensor(
                        &t.name,
                        format!(
                            "{} rows of {} elements are not whole blocks of {}",
                            q.name(),
                            t.dims[0],
                            q.block_elems()
                        ),
                    ));
                }
            }
            let nbytes = match dtype {
                DType::Quant(q) => Some(numel / q.block_elems() as u64 * q.block_bytes() as u64),
                d => numel.checked_mul(d.size() as u64),
            }
            .ok_or_else(|| ModelError::tensor(&t.name, "size overflows"))?;
            let start = (self.data_start as u64).checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(nbytes));
            let (start, end) = match (start, end) {
                (Some(s), Some(e)) if e <= len as u64 => (s as usize, e as usize),
                _ => {
                    return Err(ModelError::format(
                        &self.path,
                        format!(
                            "tensor {} extends past the end of the file (truncated GGUF?)",
                            t.name
                        ),
                    ))
                }
            };
            let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
            out.insert(
                t.name.clone(),
                Tensor::mapped(&t.name, dtype, shape, self.file.clone(), start, end),
            );
        }
        Ok(out)
    }
}
