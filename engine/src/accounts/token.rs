//! Tokens: JWT HS256, minted at login and verified at `hello`, `auth` and
//! on HTTP requests.
//!
//! The server keeps no session state for a token (docs/protocol.md, "HTTP
//! API"), so an operator's load generator may mint tokens with the secret.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use viche_protocol::validate::is_valid_username;

use crate::clock::now_ms;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Clone)]
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_s: u64,
}

/// A token that verified: whose it is and when it stops being valid.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub user: String,
    pub exp_ms: u64,
}

impl Jwt {
    pub fn new(secret: &[u8], ttl_s: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_s,
        }
    }

    /// A fresh token for `user` and its `exp` in ms since the epoch.
    pub fn mint(&self, user: &str) -> (String, u64) {
        let iat = now_ms() / 1000;
        let claims = Claims { sub: user.to_string(), iat, exp: iat + self.ttl_s };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail");
        (token, claims.exp * 1000)
    }

    /// Checks signature, algorithm (HS256 only: `none` is refused) and `exp`.
    pub fn verify(&self, token: &str) -> Option<VerifiedToken> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        if !is_valid_username(&data.claims.sub) {
            return None;
        }
        let exp_ms = data.claims.exp.saturating_mul(1000);
        if exp_ms <= now_ms() {
            return None;
        }
        Some(VerifiedToken { user: data.claims.sub, exp_ms })
    }
}
