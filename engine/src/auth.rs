//! Tokens (JWT HS256) and passwords (argon2id).
//!
//! The server keeps no session state for a token (PROTOCOL.md §1), so an
//! operator's load generator may mint tokens with the secret. Password
//! hashing is deliberately slow, so it runs on the blocking pool behind a
//! semaphore: a burst of logins queues there instead of starving delivery.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use viche_protocol::validate::is_valid_username;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

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

/// argon2id on the blocking pool, at most `permits` at once.
#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
}

impl PasswordHasherPool {
    pub fn new(permits: usize) -> Self {
        assert!(permits > 0);
        Self { permits: Arc::new(Semaphore::new(permits)) }
    }

    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let started = std::time::Instant::now();
        let hash = tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2 hash: {e}"))
        })
        .await??;
        metrics::histogram!("viche_argon2_duration_seconds").record(started.elapsed().as_secs_f64());
        Ok(hash)
    }

    /// False for a wrong password or an unparsable stored hash.
    pub async fn verify(&self, password: String, hash: String) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let started = std::time::Instant::now();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await?;
        metrics::histogram!("viche_argon2_duration_seconds").record(started.elapsed().as_secs_f64());
        Ok(ok)
    }

    /// Verifying against this costs the same as against a real hash, so an
    /// unknown username takes as long as a wrong password.
    pub fn dummy_hash() -> &'static str {
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
    }
}
