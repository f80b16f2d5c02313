//! Istio's certificate-signing API (`istio.v1.auth.IstioCertificateService`),
//! generated from `proto/ca.proto`. The server lives in [`crate::ca`], the
//! client in [`crate::identity`].
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("istio.v1.auth");
