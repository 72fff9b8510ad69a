//! Validation of the keys that keep one user (or one service key) from taking the relay from
//! the others: rows per second and their bursts (issue 12).

use super::{Config, ConfigError};

impl Config {
    /// A rows burst below `ingest.max_batch` would refuse every full batch forever.
    ///
    /// Errors: one line naming the burst key.
    pub(super) fn validate_fairness(&self) -> Result<(), ConfigError> {
        let batch = self.ingest.max_batch.get();
        for (key, burst) in [
            ("ingest.user_rows_burst", self.ingest.user_rows_burst),
            ("ingest.key_rows_burst", self.ingest.key_rows_burst),
        ] {
            if usize::try_from(burst.get()).unwrap_or(usize::MAX) < batch {
                return Err(ConfigError(format!(
                    "{key}: must be at least ingest.max_batch ({batch}), or a full batch could never pass"
                )));
            }
        }
        Ok(())
    }
}
