//! Passwords: argon2id, deliberately slow, so it runs on the blocking pool
//! behind a semaphore: a burst of logins queues there instead of starving
//! delivery on the async workers.

use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::metrics;

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
        metrics::ARGON2_DURATION.histogram().record(started.elapsed().as_secs_f64());
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
        metrics::ARGON2_DURATION.histogram().record(started.elapsed().as_secs_f64());
        Ok(ok)
    }

    /// Verifying against this costs the same as against a real hash, so an
    /// unknown username takes as long as a wrong password.
    pub fn dummy_hash() -> &'static str {
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
    }
}
