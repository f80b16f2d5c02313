//! Handshake failures in words an operator can act on.
//!
//! rustls renders certificate errors with `Debug` (`InvalidCertificate(Other(
//! OtherError(Unexpected { .. })))`), which hides the reason in noise. Every
//! refusal the daemon logs goes through [`explain`] instead.

use rustls::{AlertDescription, CertificateError, Error};

/// Why a handshake failed, in one sentence naming what to check.
pub fn explain(err: &Error) -> String {
    match err {
        Error::InvalidCertificate(cert) => certificate(cert),
        Error::NoCertificatesPresented => "the peer presented no certificate".to_owned(),
        Error::AlertReceived(alert) => {
            format!("the peer refused the handshake: {}", alert_text(*alert))
        }
        Error::NoApplicationProtocol => {
            "no common protocol (ALPN): the peer does not speak the ztunnel tunnel".to_owned()
        }
        Error::PeerIncompatible(why) => {
            format!("the peer is incompatible (TLS 1.3 with AES-GCM is required): {why:?}")
        }
        Error::PeerMisbehaved(why) => format!("the peer broke the TLS protocol: {why:?}"),
        Error::InvalidMessage(why) => format!("the peer sent a malformed TLS message: {why:?}"),
        other => other.to_string(),
    }
}

/// A handshake failure's category, a bounded label for metrics:
/// `no_certificate`, `untrusted`, `expired`, `not_yet_valid`, `identity`,
/// `peer_refused`, `incompatible`, `closed` or `other`.
pub fn classify_io(err: &std::io::Error) -> &'static str {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed",
            _ => "other",
        };
    };
    match tls {
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "untrusted",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired",
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "not_yet_valid",
        Error::InvalidCertificate(_) => "identity",
        Error::AlertReceived(_) => "peer_refused",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible",
        _ => "other",
    }
}

/// [`explain`] for the `io::Error` a tokio-rustls handshake returns.
pub fn explain_io(err: &std::io::Error) -> String {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    {
        Some(tls) => explain(tls),
        None => err.to_string(),
    }
}

fn certificate(err: &CertificateError) -> String {
    match err {
        // The project's own verifier errors (identity checks) say it all.
        CertificateError::Other(other) => other.0.to_string(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the peer's certificate has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the peer's certificate is not valid yet (check the clocks)".to_owned()
        }
        CertificateError::UnknownIssuer => {
            "the peer's certificate does not chain to a root of the trust bundle".to_owned()
        }
        CertificateError::BadSignature => "the peer's certificate has a bad signature".to_owned(),
        CertificateError::BadEncoding => "the peer's certificate does not parse".to_owned(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the peer's certificate is not valid for this purpose (extended key usage)".to_owned()
        }
        other => format!("the peer's certificate is invalid: {other:?}"),
    }
}

fn alert_text(alert: AlertDescription) -> String {
    let what = match alert {
        AlertDescription::CertificateRequired => "it requires a client certificate",
        AlertDescription::UnknownCA => "it does not trust our certificate's issuer",
        AlertDescription::BadCertificate => "it rejected our certificate",
        AlertDescription::CertificateExpired => "it says our certificate has expired",
        AlertDescription::AccessDenied => "access denied",
        AlertDescription::NoApplicationProtocol => "no common protocol (ALPN)",
        AlertDescription::ProtocolVersion => "no common TLS version",
        AlertDescription::HandshakeFailure => "no common parameters",
        _ => "",
    };
    if what.is_empty() {
        format!("{alert:?} alert")
    } else {
        format!("{what} ({alert:?} alert)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_refusals_read_as_sentences() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            explain_io(&io),
            "the peer's certificate does not chain to a root of the trust bundle"
        );
        assert_eq!(
            explain(&Error::AlertReceived(AlertDescription::CertificateRequired)),
            "the peer refused the handshake: it requires a client certificate (CertificateRequired alert)"
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(explain_io(&plain), "reset");
    }
}
