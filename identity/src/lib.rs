//! SPIFFE identity types for Signet, with no I/O.
//!
//! Role: the vocabulary every other crate speaks — [`SpiffeId`] and
//! [`TrustDomain`] (SPIFFE ID spec), [`Selector`], registration [`Entry`],
//! trust [`Bundle`]s in the SPIFFE bundle format, and X509- and JWT-SVIDs
//! with their verification rules.
//!
//! Depends on: parsing and verification crates only (x509-parser,
//! rustls-webpki, jsonwebtoken on aws-lc-rs). Nothing here opens a file or a
//! socket or reads the clock: callers pass the time in.
//!
//! Invariants: a value of these types that exists is valid (parse, don't
//! validate); secret-bearing types zeroize on drop and never print secrets.

pub mod bundle;
pub mod entry;
pub mod jwt_svid;
pub mod selector;
pub mod spiffe_id;
pub mod x509_svid;

pub use bundle::{Bundle, BundleError, BundleSet, BundleSource, JwtAuthority};
pub use entry::{Entry, EntryError, EntryProblem};
pub use jwt_svid::{JwtSvid, JwtSvidError};
pub use selector::{Selector, SelectorError};
pub use spiffe_id::{IdError, SpiffeId, TrustDomain};
pub use x509_svid::{PrivateKey, VerifiedX509Svid, X509Svid, X509SvidError, verify_x509_svid};

/// Re-exported so dependants name the same certificate type.
pub use rustls_pki_types::CertificateDer;
