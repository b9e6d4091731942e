//! Passwords: argon2id, deliberately slow and memory-hard, so it is run
//! with three bounds:
//!
//! - at most `concurrency` hashes at once, on the blocking pool (a burst
//!   of logins waits there instead of starving delivery on the async
//!   workers);
//! - at most `queue_max` waiting for their turn: past it, [`HashError::Busy`]
//!   (the caller answers 503 with `Retry-After`), so a flood of logins from
//!   many addresses cannot delay real ones by minutes;
//! - a fixed pool of memory: one set of argon2 blocks (19 MiB with the
//!   default parameters) per permitted hash, allocated at start and reused
//!   for every hash and verify. Each hash allocating its own blocks on
//!   whichever blocking-pool thread ran it let glibc keep them in
//!   per-thread arenas: 120 logins left the server at 1.1 GB.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::metrics;

/// Why a hash or a verify did not run.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// `queue_max` requests are already waiting for a permit.
    #[error("too many password checks waiting")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// argon2id on the blocking pool, at most `concurrency` at once, in a fixed
/// pool of memory.
#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    /// Requests waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    queue_max: usize,
    /// One block set per permit; a running hash holds one.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
}

/// The parameters of every hash we make (argon2's defaults: m = 19 MiB,
/// t = 2, p = 1, as OWASP recommends).
fn params() -> Params {
    Params::default()
}

impl PasswordHasherPool {
    pub fn new(concurrency: usize, queue_max: usize) -> Self {
        assert!(concurrency > 0);
        let blocks = params().block_count();
        let memory = (0..concurrency).map(|_| vec![Block::default(); blocks]).collect();
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_max,
            memory: Arc::new(Mutex::new(memory)),
        }
    }

    /// Runs `f` with a permit and a block set, on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut [Block]) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(HashError::Busy);
                }
                let permit = self.permits.acquire().await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                permit.map_err(|e| HashError::Failed(e.to_string()))?
            }
        };
        let started = std::time::Instant::now();
        // Every permit has its block set (one is only missing after a panic
        // mid-hash, and is then allocated again).
        let mut blocks = self.memory.lock().pop().unwrap_or_else(|| vec![Block::default(); params().block_count()]);
        let memory = self.memory.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = f(&mut blocks);
            memory.lock().push(blocks);
            result
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))?;
        drop(permit);
        metrics::ARGON2_DURATION.histogram().record(started.elapsed().as_secs_f64());
        result
    }

    /// An argon2id PHC string for `password`, with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move |blocks| {
            let salt = SaltString::generate(&mut OsRng);
            let mut salt_bytes = [0u8; 64];
            let salt_raw = salt.decode_b64(&mut salt_bytes).map_err(|e| HashError::Failed(e.to_string()))?;
            let params = params();
            let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
                .hash_password_into_with_memory(password.as_bytes(), salt_raw, &mut out, blocks)
                .map_err(|e| HashError::Failed(e.to_string()))?;
            let phc = PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params).map_err(|e| HashError::Failed(e.to_string()))?,
                salt: Some(salt.as_salt()),
                hash: Some(Output::new(&out).map_err(|e| HashError::Failed(e.to_string()))?),
            };
            Ok(phc.to_string())
        })
        .await
    }

    /// False for a wrong password, or a stored hash that does not parse
    /// or needs more memory than the pool holds.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, HashError> {
        self.run(move |blocks| {
            let Ok(phc) = PasswordHash::new(&hash) else { return Ok(false) };
            let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else { return Ok(false) };
            let Ok(params) = Params::try_from(&phc) else { return Ok(false) };
            let Ok(algorithm) = Algorithm::try_from(phc.algorithm) else { return Ok(false) };
            let version = phc.version.map(Version::try_from).transpose().ok().flatten().unwrap_or_default();
            let Some(blocks) = blocks.get_mut(..params.block_count()) else {
                tracing::error!(m_cost = params.m_cost(), "a stored password hash needs more memory than the pool");
                return Ok(false);
            };
            let mut salt_bytes = [0u8; 64];
            let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else { return Ok(false) };
            let mut out = vec![0u8; expected.len()];
            if Argon2::new(algorithm, version, params)
                .hash_password_into_with_memory(password.as_bytes(), salt_raw, &mut out, blocks)
                .is_err()
            {
                return Ok(false);
            }
            // `Output`'s equality is constant-time.
            Ok(Output::new(&out).is_ok_and(|computed| computed == expected))
        })
        .await
    }

    /// Verifying against this costs the same as against a real hash, so an
    /// unknown username takes as long as a wrong password.
    pub fn dummy_hash() -> &'static str {
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordVerifier;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_verify_here_and_with_the_argon2_crate_and_back() {
        let pool = PasswordHasherPool::new(1, 4);
        let hash = pool.hash("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(pool.verify("correct horse battery".into(), hash.clone()).await.unwrap());
        assert!(!pool.verify("wrong horse battery".into(), hash.clone()).await.unwrap());
        // The reference implementation agrees, both ways.
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse battery", &parsed).is_ok());
        let theirs = {
            use argon2::password_hash::PasswordHasher;
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default().hash_password(b"another password", &salt).unwrap().to_string()
        };
        assert!(pool.verify("another password".into(), theirs).await.unwrap());
        assert!(!pool.verify("x".repeat(8), PasswordHasherPool::dummy_hash().into()).await.unwrap());
        assert!(!pool.verify("x".repeat(8), "not a hash".into()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_queue_bound_requests_are_refused_not_queued() {
        let pool = PasswordHasherPool::new(1, 2);
        // One runs, two wait; the rest are refused at once.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn({
                    let p = pool.clone();
                    async move { p.hash("password1".into()).await }
                })
            })
            .collect();
        let mut busy = 0;
        let mut done = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => done += 1,
                Err(HashError::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(done >= 3, "the running one and the two waiting ones complete ({done})");
        assert_eq!(done + busy, 8);
        assert!(busy >= 1, "past one running and two waiting, requests are refused");
        assert_eq!(pool.memory.lock().len(), 1, "the block set is back in the pool");
    }
}
