//! The filesystem or process error the servers and installers here report, with what was being
//! done when it happened.

use std::fmt::Display;
use std::io;

/// A filesystem or process error, with its context.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoError {
    /// What was being done, e.g. `creating /tmp/relay-nats-…`.
    pub context: String,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// For `map_err`: the [`IoError`] with `context`, as an `E`.
pub(crate) fn io_err<E: From<IoError>>(context: impl Display) -> impl FnOnce(io::Error) -> E {
    move |source| {
        IoError {
            context: context.to_string(),
            source,
        }
        .into()
    }
}
