//! Workload identity: SPIFFE IDs, the certificates that prove them, the CA
//! client that obtains them, the manager that keeps them fresh, and the
//! trust bundle peers are verified against.

mod backoff;
pub mod bundle;
pub mod ca_client;
pub mod certificate;
pub mod manager;
mod spiffe;

pub use bundle::TrustBundle;
pub use ca_client::{CaClient, CaClientConfig, CaClientError, CaToken};
pub use certificate::WorkloadCertificate;
pub use manager::{CertManager, ManagerConfig};
pub use spiffe::{Identity, SpiffeError, TrustDomain};
