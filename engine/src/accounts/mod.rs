//! Accounts: registering a user, logging in, and the limits on both.
//!
//! The rules live here, not in a transport: usernames and passwords are
//! checked against the contract's bounds, passwords are hashed with
//! argon2id (`password.rs`: bounded concurrency, queue and memory), an
//! unknown username costs the same verify as a wrong password (the
//! dummy-hash timing defence), and registrations and failed logins are
//! rate-limited.
//!
//! Failed logins are limited three ways, and a login reserves a token of
//! each *before* its password is checked (then gives them back if the
//! password was right), so N guesses sent at once get at most the burst
//! checked, not N:
//! - per (username, client address): the tight limit (10/min): a guesser
//!   at one address gets 10 guesses at any one account;
//! - per client address: a guesser at one address gets 30 guesses a
//!   minute across all accounts;
//! - per username, from anywhere: a high ceiling (100/min) on the guesses
//!   at one account from many addresses. It is well above what one
//!   address may spend, so a guesser hammering a victim's name does not
//!   lock the victim, who logs in from another address, out.

mod limiter;
mod password;
mod token;

use std::net::IpAddr;

use serde::Deserialize;
use viche_protocol::{validate, ErrorCode};

pub use limiter::KeyedLimiter;
pub use password::{HashError, PasswordHasherPool};
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
    failed_logins_by_user_addr: KeyedLimiter,
    failed_logins_by_addr: KeyedLimiter,
    failed_logins_by_user: KeyedLimiter,
    registrations_by_addr: KeyedLimiter,
}

impl Accounts {
    pub(crate) fn new(config: &EngineConfig, jwt: Jwt) -> Self {
        Self {
            jwt,
            hasher: PasswordHasherPool::new(config.argon2_concurrency, config.argon2_queue_max),
            failed_logins_by_user_addr: KeyedLimiter::new(config.failed_login_rate, LIMITER_KEYS_MAX),
            failed_logins_by_addr: KeyedLimiter::new(config.failed_login_address_rate, LIMITER_KEYS_MAX),
            failed_logins_by_user: KeyedLimiter::new(config.failed_login_user_rate, LIMITER_KEYS_MAX),
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
        let hash = self.hasher.hash(creds.password).await.map_err(hash_failed)?;
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
        let pair = format!("{}\n{addr}", creds.username);
        let reservation = self.reserve_login(&creds.username, &pair, &addr)?;
        let result = self.check_password(store, &creds).await;
        match result {
            Ok(true) => {
                reservation.give_back(self);
                LOGINS.counter().increment(1);
                Ok(self.issue(creds.username))
            }
            Ok(false) => Err(Refusal::new(ErrorCode::Unauthorized, "wrong username or password")),
            Err(refusal) => {
                reservation.give_back(self); // not a guess: the check did not run
                Err(refusal)
            }
        }
    }

    /// Takes one failed-login token of each limit, or none (429).
    fn reserve_login<'k>(&self, user: &'k str, pair: &'k str, addr: &'k str) -> Result<Reservation<'k>, Refusal> {
        let limits = [
            (&self.failed_logins_by_user_addr, pair),
            (&self.failed_logins_by_addr, addr),
            (&self.failed_logins_by_user, user),
        ];
        for (taken, (limiter, key)) in limits.iter().enumerate() {
            if let Err(retry_after_s) = limiter.take(key) {
                for (limiter, key) in &limits[..taken] {
                    limiter.give_back(key);
                }
                RATE_LIMITED.counter_with("login").increment(1);
                return Err(Refusal::rate_limited(retry_after_s));
            }
        }
        Ok(Reservation { user, pair, addr })
    }

    /// Whether the password is the user's (an unknown user's is checked
    /// against a dummy hash: same answer, same time). Counts failures.
    async fn check_password(&self, store: &dyn Store, creds: &Credentials) -> Result<bool, Refusal> {
        let user = store.get_user(&creds.username).await.map_err(store_failed)?;
        let hash =
            user.as_ref().map_or_else(|| PasswordHasherPool::dummy_hash().to_string(), |u| u.password_hash.clone());
        let verified = self.hasher.verify(creds.password.clone(), hash).await.map_err(hash_failed)?;
        if verified && user.is_some() {
            return Ok(true);
        }
        let reason = if user.is_some() { "wrong_password" } else { "unknown_user" };
        AUTH_FAILURES.counter_with(reason).increment(1);
        Ok(false)
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

/// The failed-login tokens one login holds while its password is checked.
struct Reservation<'k> {
    user: &'k str,
    pair: &'k str,
    addr: &'k str,
}

impl Reservation<'_> {
    fn give_back(self, accounts: &Accounts) {
        accounts.failed_logins_by_user_addr.give_back(self.pair);
        accounts.failed_logins_by_addr.give_back(self.addr);
        accounts.failed_logins_by_user.give_back(self.user);
    }
}

/// Too many password checks waiting: 503 with `Retry-After`.
fn hash_failed(e: HashError) -> Refusal {
    match e {
        HashError::Busy => {
            RATE_LIMITED.counter_with("argon2_queue").increment(1);
            Refusal {
                code: ErrorCode::Overloaded,
                message: "too many logins at once; retry shortly".into(),
                retry_after_s: Some(1),
            }
        }
        HashError::Failed(e) => internal("hashing a password", e),
    }
}

fn store_failed(e: crate::store::StoreError) -> Refusal {
    internal("the store", e)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "{what} failed while answering an account request");
    Refusal::internal("internal error")
}
