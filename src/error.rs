//! One error type for the crate. Every variant carries a message that tells a
//! person what was wrong and, where possible, what to do about it.

/// Everything a user, a file or a parameter can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file or value is unknown, unsupported or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A call argument is out of range (steps, eta, timestep, seed, size...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Two tensors that must agree in shape do not.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A tensor holds NaN or infinity where finite numbers are required.
    #[error("non-finite values: {0}")]
    NonFinite(String),
    /// A weights file is unreadable or does not fit the model config.
    #[error("weights: {0}")]
    Weights(String),
    /// Reading a tensor back from the device failed.
    #[error("device error: {0}")]
    Device(String),
}

/// Crate-wide result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into())
    }
    pub(crate) fn arg(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}
