//! TLS material for `amqps://` connections, read from [`BrokerTlsConfig`]'s files at every
//! connect (a rotated certificate is picked up at the next reconnect).

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use super::{BrokerError, BrokerTlsConfig};

/// The lapin TLS configuration for `tls`; errors name the file and say "certificate".
pub(super) fn load(tls: &BrokerTlsConfig, url: &str) -> Result<OwnedTLSConfig, BrokerError> {
    let read = |what: &str, key: &str, path: &str| {
        std::fs::read(path.trim()).map_err(|e| BrokerError::Certificate {
            url: url.to_owned(),
            reason: format!("cannot read the {what} file {path} (broker.tls.{key}): {e}"),
        })
    };
    let cert_chain = if tls.ca_file.trim().is_empty() {
        None
    } else {
        let pem = read("CA certificate", "ca_file", &tls.ca_file)?;
        Some(
            String::from_utf8(pem).map_err(|_| BrokerError::Certificate {
                url: url.to_owned(),
                reason: format!(
                    "the CA certificate file {} (broker.tls.ca_file) is not PEM text",
                    tls.ca_file
                ),
            })?,
        )
    };
    let identity = if tls.cert_file.trim().is_empty() {
        None
    } else {
        Some(OwnedIdentity::PKCS8 {
            pem: read("client certificate", "cert_file", &tls.cert_file)?,
            key: read("client certificate key", "key_file", &tls.key_file)?,
        })
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// A connect error as drover reports it: a TLS failure (rustls's words are terse:
/// `invalid peer certificate: UnknownIssuer`) as [`BrokerError::Certificate`], anything
/// else (refused, reset, authentication) as [`BrokerError::Connect`].
pub(super) fn classify(url: &str, error: &lapin::Error) -> BrokerError {
    let reason = error.to_string();
    let lower = reason.to_ascii_lowercase();
    // "received fatal alert: UnknownCA": the broker refused drover's client certificate.
    let tls_words = ["certificate", "handshake", "tls", "fatal alert"];
    if tls_words.iter().any(|w| lower.contains(w)) {
        BrokerError::Certificate {
            url: url.to_owned(),
            reason,
        }
    } else {
        BrokerError::Connect {
            url: url.to_owned(),
            reason,
        }
    }
}
