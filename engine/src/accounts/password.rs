//! Passwords: argon2id, deliberately slow and memory-hard, so it is run
//! with four bounds:
//!
//! - at most `concurrency` hashes at once, each on one of `concurrency`
//!   threads of its own (never on the async workers, nor on the blocking
//!   pool that the embedded store commits on);
//! - those threads run under `SCHED_IDLE`: Linux gives them the CPU the
//!   server's other threads leave, and a delivery thread that wakes takes
//!   the core from a hash at once. At an equal share, a login flood from
//!   many addresses made the normal users' p99 ten times the clean one's
//!   on one core (docs/benchmarks.md, "Hostile clients"). On a CPU that
//!   deliveries keep busy, hashes slow down instead: their queue fills and
//!   logins are refused with 503 (below), while the users already in stay
//!   served;
//! - at most `queue_max` waiting for their turn: past it, [`HashError::Busy`]
//!   (the caller answers 503 with `Retry-After`), so a flood of logins from
//!   many addresses cannot delay real ones by minutes;
//! - a fixed pool of memory: one set of argon2 blocks (19 MiB with the
//!   default parameters) per thread, allocated at start and reused for
//!   every hash and verify. Each hash allocating its own blocks on
//!   whichever blocking-pool thread ran it let glibc keep them in
//!   per-thread arenas: 120 logins left the server at 1.1 GB.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

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

/// A hash or a verify, run on an argon2 thread with its block set.
type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

/// argon2id on threads of its own, at most `concurrency` at once, in a
/// fixed pool of memory.
#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    /// Requests waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    queue_max: usize,
    /// To the argon2 threads; they end when the last clone is dropped.
    jobs: Arc<Mutex<mpsc::Sender<Job>>>,
}

/// The parameters of every hash we make (argon2's defaults: m = 19 MiB,
/// t = 2, p = 1, as OWASP recommends).
fn params() -> Params {
    Params::default()
}

/// One argon2 thread: lowers its own priority to `SCHED_IDLE`, then runs
/// jobs in its block set until the pool is gone. A job that panics loses
/// its answer (the caller gets `Failed`), not the thread.
#[allow(unsafe_code)]
fn argon2_thread(jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: no memory effects (`param` is read during the call); pid 0
    // is the calling thread. Lowering one's own priority needs no
    // privilege; if it fails anyway, hashing works at normal priority.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "argon2: could not lower the thread's priority");
    }
    let mut blocks = vec![Block::default(); params().block_count()];
    loop {
        let job = jobs.lock().recv();
        let Ok(job) = job else { return };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut blocks)));
    }
}

impl PasswordHasherPool {
    pub fn new(concurrency: usize, queue_max: usize) -> Self {
        assert!(concurrency > 0);
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..concurrency {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || argon2_thread(receiver))
                .expect("spawning an argon2 thread");
        }
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_max,
            jobs: Arc::new(Mutex::new(sender)),
        }
    }

    /// Runs `f` with a permit, on an argon2 thread, in its block set.
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
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |blocks| {
            let _ = answer.send(f(blocks));
        });
        self.jobs.lock().send(job).map_err(|_| HashError::Failed("the argon2 threads are gone".into()))?;
        // With a permit held, at most `concurrency` jobs are queued or
        // running, so this waits for one hash, not for a queue.
        let result = answered.await.map_err(|_| HashError::Failed("the password check panicked".into()))?;
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

    /// The calling thread's scheduling policy.
    #[allow(unsafe_code)]
    fn own_policy() -> i32 {
        // SAFETY: sched_getscheduler only reads; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

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
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_run_on_threads_of_their_own_at_a_lower_priority() {
        let ours = own_policy();
        let pool = PasswordHasherPool::new(2, 4);
        let (name, policy) =
            pool.run(|_| Ok((std::thread::current().name().map(str::to_owned), own_policy()))).await.unwrap();
        assert!(name.as_deref().is_some_and(|n| n.starts_with("argon2-")), "{name:?}");
        assert_eq!(policy, libc::SCHED_IDLE);
        // The async worker that asked is untouched.
        assert_eq!(own_policy(), ours);
        assert_ne!(ours, libc::SCHED_IDLE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_that_panics_fails_alone_and_the_thread_goes_on() {
        let pool = PasswordHasherPool::new(1, 4);
        let failed = pool.run(|_| -> Result<(), HashError> { panic!("injected") }).await;
        assert!(matches!(failed, Err(HashError::Failed(_))), "{failed:?}");
        // The one thread still answers, and the permit came back.
        let hash = pool.hash("correct horse battery".into()).await.unwrap();
        assert!(pool.verify("correct horse battery".into(), hash).await.unwrap());
    }
}
