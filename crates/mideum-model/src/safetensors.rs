//! Reads Hugging Face safetensors files (one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`) into memory-mapped tensors, validating every header entry
//! against the file before any of it is used.

use crate::error::{read_json, ModelError, Result};
use crate::tensor::{DType, MappedFile, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Parses one safetensors file and appends its tensors.
pub fn load_file(path: &Path, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let file = MappedFile::open(path)?;
    let bytes = file.bytes();
    if bytes.len() < 8 {
        return Err(ModelError::format(
            path,
            "file too short for a safetensors header (truncated?)",
        ));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    let data_start = 8u64
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| ModelError::format(path, format!("header length {header_len} exceeds the file size {} (truncated or not safetensors)", bytes.len())))?
        as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..data_start]).map_err(|e| {
        ModelError::format(path, format!("safetensors header is not valid JSON: {e}"))
    })?;
    let entries = header
        .as_object()
        .ok_or_else(|| ModelError::format(path, "safetensors header is not a JSON object"))?;
    let data_len = bytes.len() - data_start;
    for (name, info) in entries {
        if name == "__metadata__" {
            continue;
        }
        let bad = |msg: String| ModelError::format(path, format!("tensor {name}: {msg}"));
        let dtype = match info.get("dtype").and_then(|d| d.as_str()) {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some(other) => {
                return Err(bad(format!(
                    "dtype {other} is not supported (expected F32, F16 or BF16)"
                )))
            }
            None => return Err(bad("missing dtype".into())),
        };
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("missing shape".into()))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .map(|d| d as usize)
                    .ok_or_else(|| bad(format!("bad dimension {d}")))
            })
            .collect::<Result<_>>()?;
        let offs = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("missing data_offsets".into()))?;
        let (b, e) = match (offs[0].as_u64(), offs[1].as_u64()) {
            (Some(b), Some(e)) if b <= e => (b as usize, e as usize),
            _ => return Err(bad(format!("invalid data_offsets {offs:?}"))),
        };
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape overflows".into()))?;
        if numel.checked_mul(dtype.size()) != Some(e - b) {
            return Err(bad(format!(
                "{} bytes for shape {:?} of {}, expected {}",
                e - b,
                shape,
                dtype.name(),
                numel * dtype.size()
            )));
        }
        if e > data_len {
            return Err(bad(format!(
                "data ends at byte {e} but the file holds {data_len} (truncated?)"
            )));
        }
        out.insert(
            name.clone(),
            Tensor::mapped(
                name,
                dtype,
                shape,
                file.clone(),
                data_start + b,
                data_start + e,
            ),
        );
    }
    Ok(())
}

/// Loads all tensors of a Hugging Face model directory.
pub fn load_dir(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let idx = read_json(&index)?;
        let map = idx
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::format(&index, "missing `weight_map` object"))?;
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                return Err(ModelError::format(
                    &index,
                    format!("shard name {shard:?} must be a plain file name"),
                ));
            }
            load_file(&dir.join(shard), &mut out)?;
        }
        for (name, shard) in map {
            if !out.contains_key(name) {
                return Err(ModelError::format(
                    &index,
                    format!("tensor {name} is listed in {shard} but not found there"),
                ));
            }
        }
    } else if single.exists() {
        load_file(&single, &mut out)?;
    } else {
        return Err(ModelError::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in this directory",
        ));
    }
    Ok(out)
}
