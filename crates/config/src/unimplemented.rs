//! Top-level DeepSpeed blocks that rustspeed does not implement. Such a block is accepted only when it asks for
//! nothing: a block with an `enabled` switch when that switch is off (its other keys are then ignored, as
//! DeepSpeed ignores them), any other block when each key it gives holds DeepSpeed's default. Anything else is an
//! error naming the key, so that a config never silently loses a feature its author turned on.

use serde_json::{json, Value};

use crate::error::ConfigError;
use crate::reader::{closest, Block};

/// Blocks switched by `enabled` (default false).
const SWITCHED_BLOCKS: [&str; 14] = [
    "amp",
    "autotuning",
    "comet",
    "comms_logger",
    "curriculum_learning",
    "data_efficiency",
    "eigenvalue",
    "elasticity",
    "flops_profiler",
    "hybrid_engine",
    "nebula",
    "progressive_layer_drop",
    "torch_autocast",
    "wandb",
];

/// The network service a monitor block logs to, for the blocks whose local alternatives rustspeed implements.
fn network_service(name: &str) -> Option<&'static str> {
    match name {
        "wandb" => Some("Weights & Biases"),
        "comet" => Some("Comet ML"),
        _ => None,
    }
}

/// Blocks without a switch, with DeepSpeed's default for each key (semantics §1.7–1.11).
fn default_valued_blocks() -> [(&'static str, Value); 3] {
    [
        (
            "checkpoint",
            json!({
                "tag_validation": "Warn", "load_universal": false, "use_node_local_storage": false,
                "parallel_write": {"pipeline_stage": false},
            }),
        ),
        (
            "aio",
            json!({
                "block_size": 1048576, "queue_depth": 8, "thread_count": 1, "single_submit": false,
                "overlap_events": true,
            }),
        ),
        (
            "pipeline",
            json!({
                "stages": "auto", "partition": "best", "seed_layers": false, "activation_checkpoint_interval": 0,
                "pipe_partitioned": true, "grad_partitioned": true,
            }),
        ),
    ]
}

/// Checks every unimplemented block present in the top-level object (and records their names as known keys).
pub(crate) fn check_unimplemented_blocks(top: &Block<'_>) -> Result<(), ConfigError> {
    for name in SWITCHED_BLOCKS {
        if let Some(block) = top.block(name, &format!("\"{name}\": {{\"enabled\": false}}"))? {
            // The block's other keys are ignored while it is off, but not a misspelt switch: `"enable": true`
            // must not read as off.
            if let Some(key) = block.keys().find(|k| *k != "enabled" && closest(k, ["enabled"]).is_some()) {
                return Err(ConfigError::UnknownKey {
                    path: block.path_of(key),
                    suggestion: Some("enabled".to_string()),
                    hint: None,
                });
            }
            if block.bool_or("enabled", false)? {
                return Err(ConfigError::Unsupported {
                    path: block.path_of("enabled"),
                    reason: match network_service(name) {
                        Some(service) => format!(
                            "rustspeed does not implement DeepSpeed's `{name}` (it needs the {service} service); use \
                             csv_monitor or tensorboard, or set \"enabled\": false"
                        ),
                        None => format!(
                            "rustspeed does not implement DeepSpeed's `{name}`; remove the block or set \"enabled\": false"
                        ),
                    },
                });
            }
        }
    }
    for (name, defaults) in default_valued_blocks() {
        if let Some(block) = top.block(name, &format!("\"{name}\": {{}}"))? {
            check_defaults(&block, &defaults, name)?;
        }
    }
    Ok(())
}

/// Every key of `block` must be a key of `defaults` holding the default value (nested objects recursively).
fn check_defaults(block: &Block<'_>, defaults: &Value, top_name: &str) -> Result<(), ConfigError> {
    let Some(known) = defaults.as_object() else { return Ok(()) };
    for key in block.keys() {
        let path = block.path_of(key);
        let Some(default) = known.get(key.as_str()) else {
            return Err(ConfigError::UnknownKey {
                path,
                suggestion: closest(key, known.keys().map(String::as_str)).map(str::to_string),
                hint: None,
            });
        };
        let given = block.raw_any(key);
        let same = match (given, default) {
            (Some(Value::Object(_)), Value::Object(_)) => {
                let nested = Block::nested(path.clone(), given.unwrap_or(default), "{}")?;
                check_defaults(&nested, default, top_name)?;
                true
            }
            (None | Some(Value::Null), _) => true,
            (Some(Value::String(a)), Value::String(b)) => a.eq_ignore_ascii_case(b) || a == "auto",
            (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Some(a), b) => a == b,
        };
        if !same {
            return Err(ConfigError::Unsupported {
                path,
                reason: format!(
                    "rustspeed does not implement DeepSpeed's `{top_name}`; only its defaults are accepted (here {})",
                    default
                ),
            });
        }
    }
    Ok(())
}
