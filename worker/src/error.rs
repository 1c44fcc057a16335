//! The worker's one error type. Each variant says whether retrying elsewhere can help:
//! the coordinator re-leases retryable failures and fails the job on the others.

use outloud_core::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// libtorch errors carry a C++ backtrace; the first line says what went wrong.
    #[error("torch: {}", .0.to_string().lines().next().unwrap_or_default())]
    Torch(#[from] tch::TchError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("data: {0}")]
    Data(String),
    #[error("checkpoint {url}: {reason}")]
    Checkpoint { url: String, reason: String },
    #[error("config: {0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The lease was revoked or the worker is shutting down.
    #[error("stopped: {0}")]
    Stopped(String),
    /// Training produced a non-finite loss: it would fail again from the same state.
    #[error("diverged: {0}")]
    Diverged(String),
    /// A rank of the gang died, hung or refused: the gang is formed anew.
    #[error("gang: {0}")]
    Collective(#[from] crate::collective::CollectiveError),
    /// The assignment is of a protocol version this worker cannot read.
    #[error("assignment refused: {0}")]
    Refused(String),
}

impl WorkerError {
    /// Whether another attempt (maybe on another worker) could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Storage(_)
                | Self::Io(_)
                | Self::Stopped(_)
                | Self::Torch(_)
                | Self::Refused(_)
                | Self::Collective(_)
        )
    }
}
