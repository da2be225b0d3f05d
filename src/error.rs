//! Errors that stop `portcullis run` from starting. Per-connection and
//! per-request errors never come here: they are answered, counted and
//! logged where they happen. A missing or invalid snapshot does not stop
//! the start either: the proxy runs not-ready until one is loaded.

use crate::config::ConfigError;
use crate::server::ServerError;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    AdminSetup(#[from] crate::admin::AdminError),
    #[error(transparent)]
    Fetch(#[from] crate::reload::fetch::FetchError),
    #[error(transparent)]
    Bind(#[from] crate::settings::BindError),
    #[error("{0}")]
    Other(String),
}
