//! Parameters to and from safetensors files, by state-dict name.

use crate::param::ParamLayout;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fmt;

#[derive(Debug)]
pub enum LoadError {
    /// The bytes are not a safetensors file.
    Format(String),
    Missing(String),
    Shape {
        name: String,
        file: Vec<usize>,
        model: Vec<usize>,
    },
    Dtype {
        name: String,
        dtype: String,
    },
    /// A tensor the model does not have (only reported when loading strictly).
    Unexpected(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Format(e) => write!(f, "not a valid safetensors file: {e}"),
            LoadError::Missing(n) => write!(f, "tensor '{n}' is missing from the file"),
            LoadError::Shape { name, file, model } => {
                write!(f, "tensor '{name}' has shape {file:?} in the file, the model needs {model:?}")
            }
            LoadError::Dtype { name, dtype } => write!(f, "tensor '{name}' is {dtype}; expected F32"),
            LoadError::Unexpected(n) => write!(f, "the file has tensor '{n}', which the model does not"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads an F32 tensor's little-endian bytes.
pub fn tensor_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>, LoadError> {
    if view.dtype() != Dtype::F32 {
        return Err(LoadError::Dtype { name: name.into(), dtype: format!("{:?}", view.dtype()) });
    }
    Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// The number of F32 elements the tensors of safetensors `bytes` hold, read from its header (which the parser
/// checks against the bytes present), so that a size from elsewhere can be checked before it is allocated.
pub fn stored_f32s(bytes: &[u8]) -> Result<usize, LoadError> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| LoadError::Format(e.to_string()))?;
    let mut total = 0usize;
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(LoadError::Dtype { name, dtype: format!("{:?}", view.dtype()) });
        }
        total += view.data().len() / 4;
    }
    Ok(total)
}

/// Fills `params` from the tensors of `bytes` named `prefix + name` for each parameter of `layout`. With
/// `strict`, a tensor under `prefix` that the model lacks is an error.
pub fn load_params(
    layout: &ParamLayout,
    params: &mut [f32],
    bytes: &[u8],
    prefix: &str,
    strict: bool,
) -> Result<(), LoadError> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| LoadError::Format(e.to_string()))?;
    for entry in layout.entries() {
        let key = format!("{prefix}{}", entry.spec.name);
        let view = file.tensor(&key).map_err(|_| LoadError::Missing(key.clone()))?;
        if view.shape() != entry.spec.shape.as_slice() {
            return Err(LoadError::Shape { name: key, file: view.shape().to_vec(), model: entry.spec.shape.clone() });
        }
        params[entry.range()].copy_from_slice(&tensor_f32(&key, &view)?);
    }
    if strict {
        if let Some(extra) =
            file.names().into_iter().find(|n| n.starts_with(prefix) && layout.find(&n[prefix.len()..]).is_none())
        {
            return Err(LoadError::Unexpected(extra.clone()));
        }
    }
    Ok(())
}

/// Serializes `buf` (parameters or gradients over `layout`) as F32 tensors named `prefix + name`, plus `metadata`.
pub fn save_params(
    layout: &ParamLayout,
    buf: &[f32],
    prefix: &str,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, String> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = layout
        .entries()
        .iter()
        .map(|e| {
            (
                format!("{prefix}{}", e.spec.name),
                buf[e.range()].iter().flat_map(|x| x.to_le_bytes()).collect(),
                e.spec.shape.clone(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (name.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    safetensors::serialize(views, &metadata).map_err(|e| e.to_string())
}
