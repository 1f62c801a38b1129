//! Which optimizer a run uses, and how much state it keeps: the engine sizes its state buffers and its memory
//! accounting from [`OptimizerKind::state_slots_per_param`].

/// The optimizers this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    /// [`crate::adam_step`], either weight-decay mode: m and v.
    Adam,
    /// [`crate::lamb_step`]: m and v.
    Lamb,
    /// [`crate::lion_step`]: m only.
    Lion,
    /// [`crate::sgd_step`]: a momentum buffer when `momentum != 0`, nothing otherwise.
    Sgd {
        /// Whether the configured momentum is non-zero.
        with_momentum: bool,
    },
}

impl OptimizerKind {
    /// How many fp32 state values the optimizer keeps per parameter (its state buffers are this many flat
    /// buffers of the parameter buffer's length).
    pub fn state_slots_per_param(self) -> usize {
        match self {
            OptimizerKind::Adam | OptimizerKind::Lamb => 2,
            OptimizerKind::Lion => 1,
            OptimizerKind::Sgd { with_momentum } => usize::from(with_momentum),
        }
    }

    /// Bytes of optimizer state per parameter (4 per fp32 slot), as the ZeRO memory model counts them.
    pub fn state_bytes_per_param(self) -> usize {
        self.state_slots_per_param() * std::mem::size_of::<f32>()
    }
}
