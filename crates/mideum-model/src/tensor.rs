//! Tensors as they sit in a checkpoint: a name, a shape, an element type and bytes that are
//! either a range of a memory-mapped file (the normal case) or a small owned buffer.

use crate::error::{ModelError, Result};
use memmap2::Mmap;
use mideum_kernels::WeightView;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

/// A read-only memory map of a checkpoint file.
pub struct MappedFile {
    map: Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Arc<MappedFile>> {
        let file = std::fs::File::open(path).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        // SAFETY: the map is read-only. Mideum never writes to checkpoint files; another process
        // truncating the file while it is mapped would fault, a risk every mmap-based loader
        // (llama.cpp, safetensors) accepts in exchange for not copying gigabytes.
        let map = unsafe { Mmap::map(&file) }.map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(Arc::new(MappedFile { map }))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

#[derive(Clone)]
enum Storage {
    Mapped {
        file: Arc<MappedFile>,
        start: usize,
        end: usize,
    },
    OwnedF32(Arc<Vec<f32>>),
    OwnedU16(Arc<Vec<u16>>),
}

#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    /// Outermost dimension first, as in PyTorch (`[out_features, in_features]` for a linear weight).
    pub shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({} {:?} {})",
            self.name,
            self.shape,
            self.dtype.name()
        )
    }
}

impl Tensor {
    /// A tensor over `file[start..end]`; `end - start` must equal the element count times the
    /// dtype size (checked by the format parsers). Misaligned data is copied into an aligned
    /// buffer, since the kernels read whole elements.
    pub fn mapped(
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        file: Arc<MappedFile>,
        start: usize,
        end: usize,
    ) -> Tensor {
        let bytes = &file.bytes()[start..end];
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(dtype.size());
        let storage = if aligned {
            Storage::Mapped { file, start, end }
        } else {
            match dtype {
                DType::F32 => Storage::OwnedF32(Arc::new(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )),
                DType::F16 | DType::BF16 => Storage::OwnedU16(Arc::new(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                )),
            }
        };
        Tensor {
            name: name.to_string(),
            dtype,
            shape,
            storage,
        }
    }

    pub fn owned_f32(name: &str, shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor {
            name: name.to_string(),
            dtype: DType::F32,
            shape,
            storage: Storage::OwnedF32(Arc::new(data)),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// The elements as the kernels want them.
    pub fn view(&self) -> WeightView<'_> {
        match &self.storage {
            Storage::OwnedF32(v) => WeightView::F32(v),
            Storage::OwnedU16(v) => match self.dtype {
                DType::BF16 => WeightView::BF16(v),
                _ => WeightView::F16(v),
            },
            Storage::Mapped { file, start, end } => {
                let bytes = &file.bytes()[*start..*end];
                match self.dtype {
                    DType::F32 => WeightView::F32(cast_f32(bytes)),
                    DType::BF16 => WeightView::BF16(cast_u16(bytes)),
                    DType::F16 => WeightView::F16(cast_u16(bytes)),
                }
            }
        }
    }

    /// All elements widened to f32 (used for small tensors such as norm weights).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let n = self.numel();
        let mut out = vec![0f32; n];
        if n > 0 {
            self.view().row_f32(0, n, &mut out);
        }
        out
    }

    pub(crate) fn expect_shape(&self, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(ModelError::tensor(
                &self.name,
                format!("expected shape {:?}, found {:?}", shape, self.shape),
            ));
        }
        Ok(())
    }
}

fn cast_f32(bytes: &[u8]) -> &[f32] {
    // SAFETY: any 4-byte pattern is a valid f32; `Tensor::mapped` only keeps mapped storage when
    // the start is 4-byte aligned and the length is a multiple of 4, so prefix and suffix are empty.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    assert!(
        pre.is_empty() && post.is_empty(),
        "tensor storage misaligned"
    );
    mid
}

fn cast_u16(bytes: &[u8]) -> &[u16] {
    // SAFETY: as in `cast_f32`, for 2-byte elements.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    assert!(
        pre.is_empty() && post.is_empty(),
        "tensor storage misaligned"
    );
    mid
}
