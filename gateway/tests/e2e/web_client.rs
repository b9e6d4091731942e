//! Without `--web-dir`, viche serves the committed web client (`web/dist`)
//! at `/`, found from the current directory or from the source tree.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the gateway crate sits in the repo").to_path_buf()
}

struct Viche {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Viche {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts viche with no `--web-dir` in `cwd`, and waits for /healthz.
async fn start_in(cwd: &Path) -> (Viche, reqwest::Client) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
    for _attempt in 0..5 {
        let data = tempfile::Builder::new().prefix("viche-web-").tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_viche"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VICHE_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .current_dir(cwd)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .arg("--jwt-secret")
            .arg("viche-web-test-secret-0123456789")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning viche");
        let mut viche = Viche { child, port, _data: data };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = viche.child.try_wait() {
                break; // the port was taken: try another
            }
            if let Ok(resp) = http.get(format!("http://127.0.0.1:{port}/healthz")).send().await {
                if resp.status() == 200 {
                    return (viche, http);
                }
            }
            assert!(Instant::now() < deadline, "viche did not answer /healthz within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("viche did not start");
}

async fn assert_serves_client(cwd: &Path) {
    let dist = repo_root().join("web/dist");
    let index = std::fs::read_to_string(dist.join("index.html"))
        .expect("web/dist/index.html is committed (npm run build in web/)");
    let (viche, http) = start_in(cwd).await;
    let base = format!("http://127.0.0.1:{}", viche.port);

    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(resp.text().await.unwrap(), index, "GET / is web/dist/index.html");

    // Every script and stylesheet the page names is served too.
    let assets: Vec<&str> = index.split('"').filter(|s| s.starts_with("/assets/")).collect();
    assert!(assets.iter().any(|a| a.ends_with(".js")), "index.html names its script: {index}");
    for asset in assets {
        let resp = http.get(format!("{base}{asset}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            body.as_ref(),
            std::fs::read(dist.join(asset.trim_start_matches('/'))).unwrap().as_slice(),
            "{asset}"
        );
    }
    // A client-side route falls back to the app.
    let resp = http.get(format!("{base}/rooms/lobby")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), index);
}

#[tokio::test]
async fn serves_web_dist_from_the_repo_root() {
    assert_serves_client(&repo_root()).await;
}

#[tokio::test]
async fn serves_web_dist_of_the_source_tree_from_anywhere() {
    let elsewhere = tempfile::tempdir().unwrap();
    assert_serves_client(elsewhere.path()).await;
}
