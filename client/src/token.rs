//! Minting tokens with the server's secret, for callers that hold it: the
//! load generator (which must not measure argon2 when it opens thousands
//! of sessions), the benches and the tests. The contract allows it: the
//! server keeps no state for a token (docs/protocol.md, "HTTP API").
//! The one place outside the server that signs a token.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The claims of a Viche token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An HS256 token for `user`, expiring at `exp_s` (seconds since the
/// epoch), signed with `secret`.
pub fn mint(secret: &str, user: &str, exp_s: u64) -> String {
    let claims = Claims { sub: user.to_string(), iat: now_s(), exp: exp_s };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with an in-memory key cannot fail")
}

/// The claims of a token signed with `secret`, if it verifies (HS256, not
/// expired).
pub fn verify(secret: &str, token: &str) -> Option<Claims> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 0;
    jsonwebtoken::decode::<Claims>(token, &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()), &validation)
        .ok()
        .map(|data| data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_with_its_secret_only() {
        let token = mint("secret-0123456789abcdef", "alice", now_s() + 60);
        assert_eq!(verify("secret-0123456789abcdef", &token).map(|c| c.sub), Some("alice".to_string()));
        assert_eq!(verify("another-secret-0123456789", &token), None);
        assert_eq!(verify("secret-0123456789abcdef", &mint("secret-0123456789abcdef", "bob", now_s() - 5)), None);
    }
}
