//! `viche admin …`: the admin API from a shell, so that an operator needs
//! neither curl nor the routes (docs/operations.md, "The admin API"). One
//! request per run; sentences by default, the server's JSON with `--json`.
//! Exit status: 0 on success, 1 when the server refused, 2 when it could
//! not be asked (no token, unreachable).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use viche_engine::admin::BACKUP_MS_MAX;

use crate::config::{AdminAction, AdminArgs};

/// The longest the server may take (a backup, bounded by the server at
/// [`BACKUP_MS_MAX`]), and a minute more for the answer.
const REQUEST_TIMEOUT_MS: u64 = BACKUP_MS_MAX + 60_000;

pub fn run(args: AdminArgs) -> ExitCode {
    let Some(token) = args.admin_token.clone().filter(|t| !t.is_empty()) else {
        eprintln!("viche admin: give the server's admin token with --admin-token or VICHE_ADMIN_TOKEN");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viche admin: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let (status, body) = match runtime.block_on(call(&args, &token)) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("viche admin: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{body}");
    } else if status.is_success() {
        println!("{}", describe(&args.action, &body));
    } else {
        let code = body["error"].as_str().unwrap_or("error");
        let message = body["message"].as_str().unwrap_or("");
        eprintln!("viche admin: the server answered {status} {code}: {message}");
    }
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn call(args: &AdminArgs, token: &str) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)).build()?;
    let base = args.url.trim_end_matches('/');
    let segment = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let request = match &args.action {
        AdminAction::Stats => client.get(format!("{base}/api/admin/stats")),
        AdminAction::DeleteUser { user } => client.delete(format!("{base}/api/admin/users/{}", segment(user))),
        AdminAction::PurgeRoom { room } => client.delete(format!("{base}/api/admin/rooms/{}", segment(room))),
        AdminAction::Retention => client.post(format!("{base}/api/admin/retention")),
        AdminAction::Backup { path } => {
            client.post(format!("{base}/api/admin/backup")).json(&serde_json::json!({ "path": path }))
        }
    };
    let response = request.bearer_auth(token).send().await.map_err(|e| anyhow::anyhow!("cannot reach {base}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| anyhow::anyhow!("reading the answer of {base}: {e}"))?;
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "error": "not_json", "message": text }));
    Ok((status, body))
}

/// The answer as a few sentences for a person.
fn describe(action: &AdminAction, b: &Value) -> String {
    let n = |key: &str| b[key].as_u64().unwrap_or(0);
    match action {
        AdminAction::Stats => {
            let retention = match (b["retention_days"].as_f64(), b["retention_messages_per_room"].as_u64()) {
                (None, None) => "off".to_string(),
                (days, count) => [
                    days.map(|d| format!("older than {d} days")),
                    count.map(|c| format!("beyond {c} messages per room")),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", "),
            };
            format!(
                "users           {}\nrooms           {}\nmessages        {}\nstore size      {}\noldest message  {}\nretention       {retention}",
                n("users"),
                n("rooms"),
                n("messages"),
                bytes(n("store_bytes")),
                oldest(&b["oldest_message_ts"]),
            )
        }
        AdminAction::DeleteUser { user } => {
            let mut line = format!(
                "deleted {user}: {} messages erased, {} sessions closed",
                n("messages_erased"),
                n("sessions_closed")
            );
            if b["already_deleted"].as_bool() == Some(true) {
                line.push_str(" (it had been deleted before)");
            }
            if b["done"].as_bool() == Some(false) {
                line.push_str("\nnot finished within the time bound: run the same command again to go on");
            }
            line
        }
        AdminAction::PurgeRoom { room } => {
            let mut line = format!(
                "purged {room}: {} messages removed; its next message will be seq {}",
                n("messages_removed"),
                n("last_seq") + 1
            );
            if b["done"].as_bool() == Some(false) {
                line.push_str("\nnot finished within the time bound: run the same command again to go on");
            }
            line
        }
        AdminAction::Retention => format!(
            "retention pass: {} rooms, {} messages removed; oldest message {}; store size {}",
            n("rooms"),
            n("messages_removed"),
            oldest(&b["oldest_message_ts"]),
            bytes(n("store_bytes")),
        ),
        AdminAction::Backup { path } => format!(
            "backup written to {path}: {} rows, {} in {} ms{}\nrestore: start `viche --data-dir {path}`",
            n("rows"),
            bytes(n("bytes")),
            n("duration_ms"),
            if b["jwt_secret_copied"].as_bool() == Some(true) { " (JWT secret included)" } else { "" },
        ),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {} ({n} bytes)", UNITS[unit])
    }
}

fn oldest(ts: &Value) -> String {
    let Some(ts) = ts.as_u64() else { return "none stored".into() };
    let age_s = viche_engine::clock::now_ms().saturating_sub(ts) / 1000;
    let age = match age_s {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} days", s / 86_400),
    };
    format!("{age} old (ts {ts})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_would_say_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB (3145728 bytes)");
        assert_eq!(oldest(&Value::Null), "none stored");
    }
}
