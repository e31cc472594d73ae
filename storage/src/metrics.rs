//! Object store errors, counted process-wide by operation and kind; a process serving
//! metrics registers [`ERRORS`] in its registry (`drfleet_artifact_store_errors_total`).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::StorageErrorKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub op: String,
    pub kind: String,
}

pub static ERRORS: LazyLock<Family<ErrorLabels, Counter>> = LazyLock::new(Family::default);

pub(crate) fn count(op: &'static str, kind: StorageErrorKind) {
    let kind = match kind {
        StorageErrorKind::NotFound => "not_found",
        StorageErrorKind::AlreadyExists => "already_exists",
        StorageErrorKind::Unavailable => "unavailable",
        StorageErrorKind::Permanent => "permanent",
    };
    ERRORS
        .get_or_create(&ErrorLabels {
            op: op.to_string(),
            kind: kind.to_string(),
        })
        .inc();
}
