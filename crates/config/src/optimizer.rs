//! The `optimizer` block (semantics §1.5): `{"type": <name>, "params": {...}, "legacy_fusion": false}`.

use serde_json::{json, Value};

use crate::error::ConfigError;
use crate::reader::{closest, f64_value, show, Block, Bound};

/// The optimizer types rustspeed implements, as the error lists them.
pub const SUPPORTED_OPTIMIZERS: [&str; 5] = ["Adam", "AdamW", "Lamb", "Lion", "SGD"];

/// DeepSpeed's own optimizer names (matched ignoring case) that rustspeed does not implement.
const DEEPSPEED_ONLY_OPTIMIZERS: [&str; 7] =
    ["OneBitAdam", "ZeroOneAdam", "OneBitLamb", "Adagrad", "MuAdam", "MuAdamW", "MuSGD"];

/// `torch.optim` classes (torch 2.15, matched exactly as DeepSpeed's `getattr(torch.optim, type)`) that rustspeed
/// does not implement.
const TORCH_ONLY_OPTIMIZERS: [&str; 11] =
    ["ASGD", "Adadelta", "Adafactor", "Adamax", "LBFGS", "Muon", "NAdam", "RAdam", "RMSprop", "Rprop", "SparseAdam"];

/// DeepSpeed's error for `max_grad_norm` among the optimizer parameters (engine `_configure_basic_optimizer`).
const MAX_GRAD_NORM_MESSAGE: &str = "'max_grad_norm' is not supported as an optimizer parameter, please switch to \
     using the deepspeed parameter 'gradient_clipping' see: https://www.deepspeed.ai/docs/config-json/#gradient-clipping \
     for more details";

/// The optimizer and its hyperparameters, with DeepSpeed's constructor defaults.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// `type` "Adam" or "AdamW" (any case).
    Adam(AdamConfig),
    /// `type` "Lamb" (any case).
    Lamb(LambConfig),
    /// `type` "Lion" (any case).
    Lion(LionConfig),
    /// `type` "SGD" (exactly: a `torch.optim` class name, case-sensitive as in DeepSpeed).
    Sgd(SgdConfig),
}

/// Which of DeepSpeed's two Adam names was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdamKind {
    Adam,
    AdamW,
}

/// Adam/AdamW (DeepSpeed's FusedAdam/CPUAdam). Note: DeepSpeed's `"Adam"` is AdamW (decoupled weight decay)
/// unless `adam_w_mode` is false.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    /// The `type` given ("Adam" or "AdamW"); written back by `to_json`.
    pub kind: AdamKind,
    /// `lr` (default 1e-3).
    pub lr: f64,
    /// `betas` (default [0.9, 0.999]).
    pub betas: [f64; 2],
    /// `eps` (default 1e-8).
    pub eps: f64,
    /// `weight_decay` (default 0.0).
    pub weight_decay: f64,
    /// `bias_correction` (default true).
    pub bias_correction: bool,
    /// `adam_w_mode` (default true): decoupled weight decay; false = L2 regularization added to the gradient.
    /// Always true for type "AdamW" (DeepSpeed ignores `adam_w_mode: false` there; rustspeed rejects it).
    pub adam_w_mode: bool,
    /// `torch_adam` (default false): DeepSpeed uses `torch.optim.Adam`/`AdamW` instead of its fused kernel.
    pub torch_adam: bool,
}

/// Lamb (DeepSpeed's FusedLamb). DeepSpeed requires dynamic loss scaling with fp16.
#[derive(Clone, Debug, PartialEq)]
pub struct LambConfig {
    /// `lr` (default 1e-3).
    pub lr: f64,
    /// `betas` (default [0.9, 0.999]).
    pub betas: [f64; 2],
    /// `eps` (default 1e-8).
    pub eps: f64,
    /// `weight_decay` (default 0.0).
    pub weight_decay: f64,
    /// `bias_correction` (default true).
    pub bias_correction: bool,
    /// `max_coeff` (default 10.0): upper clamp of the trust ratio.
    pub max_coeff: f64,
    /// `min_coeff` (default 0.01): lower clamp of the trust ratio.
    pub min_coeff: f64,
    /// `eps_inside_sqrt` (default false): add eps to v before the square root instead of after.
    pub eps_inside_sqrt: bool,
}

/// Lion (DeepSpeed's FusedLion).
#[derive(Clone, Debug, PartialEq)]
pub struct LionConfig {
    /// `lr` (default 1e-3).
    pub lr: f64,
    /// `betas` (default [0.9, 0.999]).
    pub betas: [f64; 2],
    /// `weight_decay` (default 0.0).
    pub weight_decay: f64,
}

/// SGD with momentum, as `torch.optim.SGD` (torch 2.15 defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    /// `lr` (default 1e-3, torch ≥ 2's default).
    pub lr: f64,
    /// `momentum` (default 0.0).
    pub momentum: f64,
    /// `dampening` (default 0.0).
    pub dampening: f64,
    /// `weight_decay` (default 0.0): L2 term added to the gradient.
    pub weight_decay: f64,
    /// `nesterov` (default false): needs momentum > 0 and dampening 0.
    pub nesterov: bool,
}

const DEFAULT_LR: f64 = 1e-3;
const DEFAULT_BETAS: [f64; 2] = [0.9, 0.999];
const DEFAULT_EPS: f64 = 1e-8;

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            kind: AdamKind::Adam,
            lr: DEFAULT_LR,
            betas: DEFAULT_BETAS,
            eps: DEFAULT_EPS,
            weight_decay: 0.0,
            bias_correction: true,
            adam_w_mode: true,
            torch_adam: false,
        }
    }
}

impl Default for LambConfig {
    fn default() -> Self {
        LambConfig {
            lr: DEFAULT_LR,
            betas: DEFAULT_BETAS,
            eps: DEFAULT_EPS,
            weight_decay: 0.0,
            bias_correction: true,
            max_coeff: 10.0,
            min_coeff: 0.01,
            eps_inside_sqrt: false,
        }
    }
}

impl Default for LionConfig {
    fn default() -> Self {
        LionConfig { lr: DEFAULT_LR, betas: DEFAULT_BETAS, weight_decay: 0.0 }
    }
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: DEFAULT_LR, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
}

const OPTIMIZER_EXAMPLE: &str = r#""optimizer": {"type": "AdamW", "params": {"lr": 0.001}}"#;
const PARAMS_EXAMPLE: &str = r#""params": {"lr": 0.001}"#;

impl OptimizerConfig {
    /// The `type` name written by `to_json`.
    pub fn type_name(&self) -> &'static str {
        match self {
            OptimizerConfig::Adam(AdamConfig { kind: AdamKind::Adam, .. }) => "Adam",
            OptimizerConfig::Adam(AdamConfig { kind: AdamKind::AdamW, .. }) => "AdamW",
            OptimizerConfig::Lamb(_) => "Lamb",
            OptimizerConfig::Lion(_) => "Lion",
            OptimizerConfig::Sgd(_) => "SGD",
        }
    }

    /// The learning rate given in `params.lr` (or its default).
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Adam(c) => c.lr,
            OptimizerConfig::Lamb(c) => c.lr,
            OptimizerConfig::Lion(c) => c.lr,
            OptimizerConfig::Sgd(c) => c.lr,
        }
    }

    pub(crate) fn parse(value: &Value) -> Result<Self, ConfigError> {
        let block = Block::nested("optimizer".to_string(), value, OPTIMIZER_EXAMPLE)?;
        let name = block.opt_string("type")?.ok_or_else(|| ConfigError::MissingKey {
            path: block.path_of("type"),
            context: format!(
                "in the optimizer block (rustspeed has no client optimizer to fall back on), e.g. {OPTIMIZER_EXAMPLE}"
            ),
        })?;
        if block.bool_or("legacy_fusion", false)? {
            return Err(ConfigError::Unsupported {
                path: block.path_of("legacy_fusion"),
                reason: "it selects DeepSpeed's old fused fp16 optimizer path on GPU; leave it false".to_string(),
            });
        }
        let no_params = json!({});
        let params = match block.block("params", PARAMS_EXAMPLE)? {
            Some(params) => params,
            None => Block::nested(block.path_of("params"), &no_params, PARAMS_EXAMPLE)?,
        };
        if params.raw("max_grad_norm").is_some() {
            return Err(ConfigError::Rejected {
                path: params.path_of("max_grad_norm"),
                message: MAX_GRAD_NORM_MESSAGE.to_string(),
            });
        }
        let config = match supported_kind(&block, name)? {
            "Adam" => OptimizerConfig::Adam(parse_adam(&params, AdamKind::Adam)?),
            "AdamW" => OptimizerConfig::Adam(parse_adam(&params, AdamKind::AdamW)?),
            "Lamb" => OptimizerConfig::Lamb(parse_lamb(&params)?),
            "Lion" => OptimizerConfig::Lion(parse_lion(&params)?),
            _ => OptimizerConfig::Sgd(parse_sgd(&params)?),
        };
        params.finish()?;
        block.finish()?;
        Ok(config)
    }

    pub(crate) fn to_json(&self) -> Value {
        let params = match self {
            OptimizerConfig::Adam(c) => json!({
                "lr": c.lr, "betas": c.betas, "eps": c.eps, "weight_decay": c.weight_decay,
                "bias_correction": c.bias_correction, "adam_w_mode": c.adam_w_mode, "torch_adam": c.torch_adam,
            }),
            OptimizerConfig::Lamb(c) => json!({
                "lr": c.lr, "betas": c.betas, "eps": c.eps, "weight_decay": c.weight_decay,
                "bias_correction": c.bias_correction, "max_coeff": c.max_coeff, "min_coeff": c.min_coeff,
                "eps_inside_sqrt": c.eps_inside_sqrt,
            }),
            OptimizerConfig::Lion(c) => json!({"lr": c.lr, "betas": c.betas, "weight_decay": c.weight_decay}),
            OptimizerConfig::Sgd(c) => json!({
                "lr": c.lr, "momentum": c.momentum, "dampening": c.dampening, "weight_decay": c.weight_decay,
                "nesterov": c.nesterov,
            }),
        };
        json!({"type": self.type_name(), "params": params})
    }
}

/// Maps a `type` to the canonical name of a supported optimizer, or explains why it is not one.
fn supported_kind(block: &Block<'_>, name: &str) -> Result<&'static str, ConfigError> {
    let path = block.path_of("type");
    let listed = SUPPORTED_OPTIMIZERS.join(", ");
    if name == "SGD" {
        return Ok("SGD");
    }
    if let Some(kind) = SUPPORTED_OPTIMIZERS.iter().find(|n| **n != "SGD" && n.eq_ignore_ascii_case(name)) {
        return Ok(kind);
    }
    if let Some(known) = DEEPSPEED_ONLY_OPTIMIZERS.iter().find(|n| n.eq_ignore_ascii_case(name)) {
        return Err(ConfigError::Unsupported {
            path,
            reason: format!("DeepSpeed's {known} optimizer is not implemented; rustspeed supports {listed}"),
        });
    }
    if TORCH_ONLY_OPTIMIZERS.contains(&name) {
        return Err(ConfigError::Unsupported {
            path,
            reason: format!("torch.optim.{name} is not implemented; rustspeed supports {listed}"),
        });
    }
    let mut message = format!("{name} is not a supported DeepSpeed Optimizer; rustspeed supports {listed}");
    if let Some(suggestion) = closest(name, SUPPORTED_OPTIMIZERS) {
        message.push_str(&format!(" (did you mean `{suggestion}`? torch.optim names such as SGD are case-sensitive)"));
    }
    Err(ConfigError::Rejected { path, message })
}

/// `betas`: a list of two numbers, each in [0, 1).
fn betas(params: &Block<'_>) -> Result<[f64; 2], ConfigError> {
    let Some(value) = params.value("betas", "a list")? else { return Ok(DEFAULT_BETAS) };
    let path = params.path_of("betas");
    match value.as_array().map(Vec::as_slice) {
        Some([beta1, beta2]) => Ok([
            f64_value(&format!("{path}[0]"), beta1, Bound::WithinOpen(0.0, 1.0))?,
            f64_value(&format!("{path}[1]"), beta2, Bound::WithinOpen(0.0, 1.0))?,
        ]),
        _ => Err(ConfigError::InvalidValue {
            path,
            value: show(value),
            rule: "must be a list of two numbers [beta1, beta2], each in [0, 1)".to_string(),
        }),
    }
}

fn parse_adam(params: &Block<'_>, kind: AdamKind) -> Result<AdamConfig, ConfigError> {
    let defaults = AdamConfig::default();
    let adam_w_mode = params.bool_or("adam_w_mode", defaults.adam_w_mode)?;
    if kind == AdamKind::AdamW && !adam_w_mode {
        return Err(ConfigError::Rejected {
            path: params.path_of("adam_w_mode"),
            message: "type \"AdamW\" always uses decoupled weight decay (DeepSpeed silently ignores adam_w_mode: \
                      false for it); for L2 regularization use type \"Adam\" with adam_w_mode: false"
                .to_string(),
        });
    }
    if params.bool_or("amsgrad", false)? {
        return Err(ConfigError::Unsupported {
            path: params.path_of("amsgrad"),
            reason: "Adam has no AMSGrad variant (DeepSpeed: \"FusedAdam does not support the AMSGrad variant.\")"
                .to_string(),
        });
    }
    Ok(AdamConfig {
        kind,
        lr: params.f64_or("lr", defaults.lr, Bound::AtLeast(0.0))?,
        betas: betas(params)?,
        eps: params.f64_or("eps", defaults.eps, Bound::AtLeast(0.0))?,
        weight_decay: params.f64_or("weight_decay", defaults.weight_decay, Bound::AtLeast(0.0))?,
        bias_correction: params.bool_or("bias_correction", defaults.bias_correction)?,
        adam_w_mode,
        torch_adam: params.bool_or("torch_adam", defaults.torch_adam)?,
    })
}

fn parse_lamb(params: &Block<'_>) -> Result<LambConfig, ConfigError> {
    let defaults = LambConfig::default();
    let config = LambConfig {
        lr: params.f64_or("lr", defaults.lr, Bound::AtLeast(0.0))?,
        betas: betas(params)?,
        eps: params.f64_or("eps", defaults.eps, Bound::AtLeast(0.0))?,
        weight_decay: params.f64_or("weight_decay", defaults.weight_decay, Bound::AtLeast(0.0))?,
        bias_correction: params.bool_or("bias_correction", defaults.bias_correction)?,
        max_coeff: params.f64_or("max_coeff", defaults.max_coeff, Bound::Above(0.0))?,
        min_coeff: params.f64_or("min_coeff", defaults.min_coeff, Bound::AtLeast(0.0))?,
        eps_inside_sqrt: params.bool_or("eps_inside_sqrt", defaults.eps_inside_sqrt)?,
    };
    if config.min_coeff > config.max_coeff {
        return Err(ConfigError::InvalidValue {
            path: params.path_of("min_coeff"),
            value: show(&json!(config.min_coeff)),
            rule: format!(
                "must not exceed max_coeff ({}): the trust ratio is clamped to [min_coeff, max_coeff]",
                config.max_coeff
            ),
        });
    }
    Ok(config)
}

fn parse_lion(params: &Block<'_>) -> Result<LionConfig, ConfigError> {
    let defaults = LionConfig::default();
    Ok(LionConfig {
        lr: params.f64_or("lr", defaults.lr, Bound::AtLeast(0.0))?,
        betas: betas(params)?,
        weight_decay: params.f64_or("weight_decay", defaults.weight_decay, Bound::AtLeast(0.0))?,
    })
}

fn parse_sgd(params: &Block<'_>) -> Result<SgdConfig, ConfigError> {
    let defaults = SgdConfig::default();
    let config = SgdConfig {
        lr: params.f64_or("lr", defaults.lr, Bound::AtLeast(0.0))?,
        momentum: params.f64_or("momentum", defaults.momentum, Bound::AtLeast(0.0))?,
        dampening: params.f64_or("dampening", defaults.dampening, Bound::Any)?,
        weight_decay: params.f64_or("weight_decay", defaults.weight_decay, Bound::AtLeast(0.0))?,
        nesterov: params.bool_or("nesterov", defaults.nesterov)?,
    };
    if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
        return Err(ConfigError::Rejected {
            path: params.path_of("nesterov"),
            message: format!(
                "Nesterov momentum requires a momentum and zero dampening (torch.optim.SGD); got momentum {} and \
                 dampening {}",
                config.momentum, config.dampening
            ),
        });
    }
    Ok(config)
}
