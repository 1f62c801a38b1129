//! Batch-size inference and checks, exactly as DeepSpeed's `_set_batch_related_parameters` and `_batch_assertion`
//! (semantics §1.2): integer division everywhere, the same checks in the same order, DeepSpeed's error texts, each
//! followed by a hint line with the arithmetic.
//!
//! One deliberate difference: where DeepSpeed's inference divides by a zero micro-batch or accumulation count and
//! dies with Python's `ZeroDivisionError`, rustspeed reports that value's "has to be greater than 0" error.

use crate::error::ConfigError;

/// The three batch sizes after inference; `train_batch_size == micro_batch_size × gradient_accumulation_steps ×
/// world size` always holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSizes {
    /// Samples per optimizer step over all data-parallel ranks.
    pub train_batch_size: usize,
    /// Samples per forward/backward on one rank (`train_micro_batch_size_per_gpu`).
    pub micro_batch_size: usize,
    /// Micro-batches per rank between optimizer steps.
    pub gradient_accumulation_steps: usize,
}

/// Which of the three keys were inferred, and how, for the hint of a failed check.
#[derive(Clone, Copy)]
enum Inferred {
    Nothing,
    Accumulation,
    Micro,
    Train,
    AccumulationAndMicro,
    TrainAndAccumulation,
}

/// Infers and checks the batch sizes from the three optional keys and the data-parallel world size.
pub(crate) fn resolve(
    train: Option<usize>,
    micro: Option<usize>,
    accumulation: Option<usize>,
    world_size: usize,
) -> Result<BatchSizes, ConfigError> {
    if world_size == 0 {
        return Err(ConfigError::BatchSize {
            message: "world size: 0 has to be greater than 0".to_string(),
            hint: "the world size is the number of data-parallel ranks; it is at least 1".to_string(),
        });
    }
    let w = world_size;
    let (tb, mb, gas, inferred) = match (train, micro, accumulation) {
        (Some(tb), Some(mb), Some(gas)) => (tb, mb, gas, Inferred::Nothing),
        (Some(tb), Some(mb), None) => {
            if mb == 0 {
                return Err(micro_not_positive(0, "it was given as 0".to_string()));
            }
            (tb, mb, tb / mb / w, Inferred::Accumulation)
        }
        (Some(tb), None, Some(gas)) => {
            if gas == 0 {
                return Err(accumulation_not_positive(0, "it was given as 0".to_string()));
            }
            (tb, tb / w / gas, gas, Inferred::Micro)
        }
        (None, Some(mb), Some(gas)) => (product(mb, gas, w)?, mb, gas, Inferred::Train),
        (Some(tb), None, None) => (tb, tb / w, 1, Inferred::AccumulationAndMicro),
        (None, Some(mb), None) => (product(mb, 1, w)?, mb, 1, Inferred::TrainAndAccumulation),
        (None, None, _) => {
            return Err(ConfigError::BatchSize {
                message: "Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided".to_string(),
                hint: "give train_micro_batch_size_per_gpu (samples per rank per step) and, optionally, \
                       gradient_accumulation_steps; train_batch_size is then micro × accumulation × world size"
                    .to_string(),
            });
        }
    };
    if tb == 0 {
        return Err(ConfigError::BatchSize {
            message: format!("Train batch size: {tb} has to be greater than 0"),
            hint: match inferred {
                Inferred::Train | Inferred::TrainAndAccumulation => format!(
                    "train_batch_size was inferred as micro × accumulation × world size = {mb} × {gas} × {w} = 0"
                ),
                _ => "train_batch_size is the number of samples per optimizer step over all ranks".to_string(),
            },
        });
    }
    if mb == 0 {
        let how = match inferred {
            Inferred::Micro => format!(
                "it was inferred as train_batch_size // world size // gradient_accumulation_steps = {tb} // {w} // \
                 {gas} = 0; train_batch_size must be at least world size × accumulation = {}",
                w.saturating_mul(gas)
            ),
            Inferred::AccumulationAndMicro => format!(
                "it was inferred as train_batch_size // world size = {tb} // {w} = 0; train_batch_size must be at \
                 least the world size {w}"
            ),
            _ => "it was given as 0".to_string(),
        };
        return Err(micro_not_positive(mb, how));
    }
    if gas == 0 {
        let how = match inferred {
            Inferred::Accumulation => format!(
                "it was inferred as train_batch_size // train_micro_batch_size_per_gpu // world size = {tb} // {mb} \
                 // {w} = 0; train_batch_size must be at least micro × world size = {}",
                mb.saturating_mul(w)
            ),
            _ => "it was given as 0".to_string(),
        };
        return Err(accumulation_not_positive(gas, how));
    }
    let expected = product(mb, gas, w)?;
    if tb != expected {
        let mut hint = format!(
            "with world size {w}, train_batch_size must equal train_micro_batch_size_per_gpu × \
             gradient_accumulation_steps × world size = {mb} × {gas} × {w} = {expected}"
        );
        match inferred {
            Inferred::Accumulation => hint.push_str(&format!(
                " (gradient_accumulation_steps was inferred as {tb} // {mb} // {w} = {gas}, integer division: \
                 train_batch_size must be a multiple of micro × world size = {})",
                mb.saturating_mul(w)
            )),
            Inferred::Micro => hint.push_str(&format!(
                " (train_micro_batch_size_per_gpu was inferred as {tb} // {w} // {gas} = {mb}, integer division: \
                 train_batch_size must be a multiple of world size × accumulation = {})",
                w.saturating_mul(gas)
            )),
            Inferred::AccumulationAndMicro => hint.push_str(&format!(
                " (train_micro_batch_size_per_gpu was inferred as {tb} // {w} = {mb}, integer division: \
                 train_batch_size must be a multiple of the world size {w})"
            )),
            _ => hint.push_str("; or give only two of the three keys and let the third be inferred"),
        }
        return Err(ConfigError::BatchSize {
            message: format!(
                "Check batch related parameters. train_batch_size is not equal to micro_batch_per_gpu * \
                 gradient_acc_step * world_size {tb} != {mb} * {gas} * {w}"
            ),
            hint,
        });
    }
    Ok(BatchSizes { train_batch_size: tb, micro_batch_size: mb, gradient_accumulation_steps: gas })
}

/// `mb × gas × w`, or an error when the product does not fit in a `usize`.
fn product(mb: usize, gas: usize, w: usize) -> Result<usize, ConfigError> {
    mb.checked_mul(gas).and_then(|x| x.checked_mul(w)).ok_or_else(|| ConfigError::BatchSize {
        message: format!(
            "train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size overflows: {mb} * {gas} * {w}"
        ),
        hint: "these are sample counts; values this large are a typo".to_string(),
    })
}

fn micro_not_positive(mb: usize, how: String) -> ConfigError {
    ConfigError::BatchSize {
        message: format!("Micro batch size per gpu: {mb} has to be greater than 0"),
        hint: format!("train_micro_batch_size_per_gpu is the number of samples per rank per forward pass; {how}"),
    }
}

fn accumulation_not_positive(gas: usize, how: String) -> ConfigError {
    ConfigError::BatchSize {
        message: format!("Gradient accumulation steps: {gas} has to be greater than 0"),
        hint: format!("gradient_accumulation_steps is the number of micro-batches per optimizer step; {how}"),
    }
}
