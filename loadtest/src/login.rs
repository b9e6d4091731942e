//! The `login` scenario: registrations, then logins, of real users through
//! the HTTP API, `concurrency` requests in flight (closed loop: argon2 on
//! the server is what is measured, and it bounds the rate).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use viche_client::HttpClient;

use crate::clock::{mono_ns, process_cpu_us};
use crate::live::{Live, K};
use crate::report::{h, Raw};

pub struct LoginPlan {
    /// (global index, username)
    pub users: Vec<(usize, String)>,
    pub concurrency: usize,
    pub password: String,
}

/// Registers every user, then logs each in, until done or `end_ns`.
pub async fn run(plan: LoginPlan, http: Vec<HttpClient>, live: Arc<Live>, end_ns: u64) -> Raw {
    live.declare(h::REGISTER);
    live.declare(h::LOGIN);
    let cpu0 = process_cpu_us();
    let users = Arc::new(plan.users);
    let http = Arc::new(http);
    let password = Arc::new(plan.password);
    for phase in [Phase::Register, Phase::Login] {
        let phase_began = mono_ns();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..plan.concurrency.max(1) {
            let (users, http, password, live, next) =
                (users.clone(), http.clone(), password.clone(), live.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= users.len() || mono_ns() >= end_ns {
                        return;
                    }
                    let (index, user) = &users[i];
                    let client = &http[index % http.len()];
                    let t0 = mono_ns();
                    let result = match phase {
                        Phase::Register => client.register(user, &password).await,
                        Phase::Login => client.login(user, &password).await,
                    };
                    let took = mono_ns() - t0;
                    match result {
                        Ok(_) => {
                            live.inc(if phase == Phase::Register { K::Registrations } else { K::Logins });
                            live.record(if phase == Phase::Register { h::REGISTER } else { h::LOGIN }, took);
                        }
                        Err(e) => {
                            live.inc(K::HttpFailures);
                            match e.status() {
                                Some(status) => live.error(&format!("{} http {status}", phase.name())),
                                None => live.error(&format!("{} transport", phase.name())),
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let took_us = (mono_ns() - phase_began) / 1000;
        live.add(if phase == Phase::Register { K::RegisterPhaseUs } else { K::LoginPhaseUs }, took_us);
    }
    live.add(K::GeneratorCpuUs, process_cpu_us().saturating_sub(cpu0));
    live.snapshot()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Register,
    Login,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Register => "register",
            Phase::Login => "login",
        }
    }
}
