//! Signatures, as the Standard Webhooks spec defines them.

use super::error::EndpointError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// A signing secret: `whsec_` then the key in base64, as the Standard
/// Webhooks spec writes it. Its `Debug` form hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

/// The prefix of a secret's text form.
const PREFIX: &str = "whsec_";

/// The shortest key the spec allows (24 bytes), and the longest (64).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

impl Secret {
    /// Reads a secret in its text form, `whsec_` then the key in base64.
    ///
    /// # Errors
    ///
    /// [`EndpointError::Secret`] when the prefix is missing, the base64
    /// does not decode, or the key is not 24 to 64 bytes long.
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        let bad = |why: &str| EndpointError::Secret(why.to_owned());
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("a secret starts with `whsec_`, then the key in base64"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|err| bad(&format!("the key after `whsec_` is not base64: {err}")))?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(bad(&format!(
                "the key is {} bytes long; it must be 24 to 64",
                key.len()
            )));
        }
        Ok(Secret { key })
    }

    /// The secret in its text form, to give to the endpoint's owner.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// `v1,` then the base64 HMAC-SHA256 of `id.timestamp.body`.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, EndpointError> {
        Secret::parse(text)
    }
}

/// The `webhook-signature` header: one signature per secret, separated by
/// spaces, so a receiver still on the old secret of a rotation verifies.
pub(crate) fn signature_header(
    secrets: &[Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Signs with `secret` (text form) as a receiver's test would: for the
/// docs' examples and for users checking their own receiver.
///
/// # Errors
///
/// [`EndpointError::Secret`] when the secret does not read.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, EndpointError> {
    Ok(Secret::parse(secret)?.sign(id, timestamp, body))
}
