//! Static files at `/`: the web client from `--web-dir`, or a small page
//! saying the client is not built, so `/` never answers a bare 404.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

const PLACEHOLDER: &str = "<!doctype html><html><head><meta charset=utf-8><title>Viche</title></head>\
<body><h1>Viche is running</h1><p>The web client is not part of this build yet. \
The WebSocket endpoint is <code>/ws</code>; see docs/protocol.md.</p></body></html>";

/// The file for a request path, as (content type, bytes), or `None`.
pub async fn lookup(web_dir: Option<&Path>, path: &str) -> Option<(String, Bytes)> {
    let Some(root) = web_dir else {
        return (path == "/" || path == "/index.html")
            .then(|| ("text/html; charset=utf-8".to_string(), Bytes::from_static(PLACEHOLDER.as_bytes())));
    };
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() { "index.html" } else { relative };
    let mut file = PathBuf::from(root);
    for part in Path::new(relative).components() {
        match part {
            Component::Normal(p) => file.push(p),
            _ => return None, // no `..`, no absolute paths
        }
    }
    let (file, body) = match tokio::fs::read(&file).await {
        Ok(body) => (file, body),
        // Client-side routes fall back to the app's entry point.
        Err(_) if !relative.contains('.') => {
            let index = root.join("index.html");
            let body = tokio::fs::read(&index).await.ok()?;
            (index, body)
        }
        Err(_) => return None,
    };
    let mime = mime_guess::from_path(&file).first_or_octet_stream().to_string();
    Some((mime, Bytes::from(body)))
}
