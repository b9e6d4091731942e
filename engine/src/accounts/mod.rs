//! Accounts: registering a user, logging in, and the limits on both.
//!
//! The rules live here, not in a transport: usernames and passwords are
//! checked against the contract's bounds, passwords are hashed with
//! argon2id, an unknown username costs the same verify as a wrong
//! password (the dummy-hash timing defence), and failed logins and
//! registrations are rate-limited per username and per client address.

mod limiter;
mod password;
mod token;

use std::net::IpAddr;

use serde::Deserialize;
use viche_protocol::{validate, ErrorCode};

pub use limiter::KeyedLimiter;
pub use password::PasswordHasherPool;
pub use token::{Claims, Jwt, VerifiedToken};

use crate::address::limit_key;
use crate::clock::now_ms;
use crate::config::EngineConfig;
use crate::metrics::{AUTH_FAILURES, LOGINS, RATE_LIMITED, REGISTRATIONS};
use crate::refusal::Refusal;
use crate::store::{Store, UserRecord};

/// Keys each login or registration limiter tracks at most.
const LIMITER_KEYS_MAX: usize = 100_000;

/// A username and password, as `POST /api/register` and `/api/login` carry them.
#[derive(Debug, Clone, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// A freshly minted token: whose it is, the token, and `exp` in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub user: String,
    pub token: String,
    pub expires_at_ms: u64,
}

pub(crate) struct Accounts {
    jwt: Jwt,
    hasher: PasswordHasherPool,
    failed_logins_by_user: KeyedLimiter,
    failed_logins_by_addr: KeyedLimiter,
    registrations_by_addr: KeyedLimiter,
}

impl Accounts {
    pub(crate) fn new(config: &EngineConfig, jwt: Jwt) -> Self {
        Self {
            jwt,
            hasher: PasswordHasherPool::new(config.argon2_concurrency),
            failed_logins_by_user: KeyedLimiter::new(config.failed_login_rate, LIMITER_KEYS_MAX),
            failed_logins_by_addr: KeyedLimiter::new(config.failed_login_rate, LIMITER_KEYS_MAX),
            registrations_by_addr: KeyedLimiter::new(config.register_rate, LIMITER_KEYS_MAX),
        }
    }

    /// Charges one registration attempt to `client`, before anything else
    /// of the request is read.
    pub(crate) fn admit_registration(&self, client: IpAddr) -> Result<(), Refusal> {
        self.registrations_by_addr.take(&limit_key(client).to_string()).map_err(|retry_after_s| {
            RATE_LIMITED.counter_with("register").increment(1);
            Refusal::rate_limited(retry_after_s)
        })
    }

    pub(crate) async fn register(&self, store: &dyn Store, creds: Credentials) -> Result<IssuedToken, Refusal> {
        check_credentials(&creds)?;
        // Cheap early answer for a taken name; the store's insert decides.
        if store.get_user(&creds.username).await.map_err(store_failed)?.is_some() {
            return Err(username_taken());
        }
        let hash = self.hasher.hash(creds.password).await.map_err(|e| internal("hashing a password", e))?;
        let record = UserRecord { username: creds.username.clone(), password_hash: hash, created_ms: now_ms() };
        if !store.create_user(&record).await.map_err(store_failed)? {
            return Err(username_taken());
        }
        REGISTRATIONS.counter().increment(1);
        Ok(self.issue(creds.username))
    }

    pub(crate) async fn login(
        &self,
        store: &dyn Store,
        client: IpAddr,
        creds: Credentials,
    ) -> Result<IssuedToken, Refusal> {
        check_credentials(&creds)?;
        let addr = limit_key(client).to_string();
        let limited = self
            .failed_logins_by_user
            .retry_after_s(&creds.username)
            .max(self.failed_logins_by_addr.retry_after_s(&addr));
        if let Some(retry_after_s) = limited {
            RATE_LIMITED.counter_with("login").increment(1);
            return Err(Refusal::rate_limited(retry_after_s));
        }
        let user = store.get_user(&creds.username).await.map_err(store_failed)?;
        // An unknown user costs the same hash as a known one: same answer, same time.
        let hash =
            user.as_ref().map_or_else(|| PasswordHasherPool::dummy_hash().to_string(), |u| u.password_hash.clone());
        let verified =
            self.hasher.verify(creds.password, hash).await.map_err(|e| internal("verifying a password", e))?;
        if !(verified && user.is_some()) {
            let reason = if user.is_some() { "wrong_password" } else { "unknown_user" };
            AUTH_FAILURES.counter_with(reason).increment(1);
            let _ = self.failed_logins_by_user.take(&creds.username);
            let _ = self.failed_logins_by_addr.take(&addr);
            return Err(Refusal::new(ErrorCode::Unauthorized, "wrong username or password"));
        }
        LOGINS.counter().increment(1);
        Ok(self.issue(creds.username))
    }

    /// Checks a token's signature, algorithm and expiry; counts refusals.
    pub(crate) fn authenticate(&self, token: &str) -> Result<VerifiedToken, Refusal> {
        self.jwt.verify(token).ok_or_else(|| {
            AUTH_FAILURES.counter_with("bad_token").increment(1);
            Refusal::new(ErrorCode::Unauthorized, "invalid or expired token")
        })
    }

    fn issue(&self, user: String) -> IssuedToken {
        let (token, expires_at_ms) = self.jwt.mint(&user);
        IssuedToken { user, token, expires_at_ms }
    }
}

fn check_credentials(c: &Credentials) -> Result<(), Refusal> {
    if !validate::is_valid_username(&c.username) {
        return Err(Refusal::new(ErrorCode::Invalid, "username must be 3 to 32 characters of A-Z a-z 0-9 _ . -"));
    }
    if !validate::is_valid_password(&c.password) {
        return Err(Refusal::new(ErrorCode::Invalid, "password must be 8 to 1024 bytes"));
    }
    Ok(())
}

fn username_taken() -> Refusal {
    Refusal::new(ErrorCode::Conflict, "username taken")
}

fn store_failed(e: crate::store::StoreError) -> Refusal {
    internal("the store", e)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "{what} failed while answering an account request");
    Refusal::internal("internal error")
}
