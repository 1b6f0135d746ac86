//! File download over HTTP, streamed from disk (the iii channels guide, example 1).
//!
//! A function serves `GET /files/:filename` from a directory: it sets the status and
//! headers, then streams the file into the response channel in 64 KiB pieces — the file is
//! never held in memory. chanrelay turns the channel into the HTTP response.
//!
//! ```text
//! chanrelay serve &
//! CHANRELAY_CONTROL=http://127.0.0.1:49171 CHANRELAY_WS=ws://127.0.0.1:49170 \
//!     FILES_DIR=/data/reports cargo run -p chanrelay-client --example file_download &
//! curl -O http://127.0.0.1:49170/files/report.pdf
//! ```

#[path = "support/engine.rs"]
mod engine;

use std::path::{Path, PathBuf};

use chanrelay_client::Relay;
use engine::{BoxError, HttpRequest, HttpResponse};
use tokio::io::AsyncReadExt;

/// Read size when streaming the file.
const PIECE: usize = 64 * 1024;

/// `files::download`: streams `dir/{filename}` as the response.
pub async fn download(
    dir: PathBuf,
    req: HttpRequest,
    mut res: HttpResponse,
) -> Result<(), BoxError> {
    let name = req
        .event
        .path_params
        .get("filename")
        .cloned()
        .unwrap_or_default();
    // Only plain names inside `dir`.
    let safe = !name.is_empty() && !name.contains('/') && !name.contains("..");
    let file = if safe {
        tokio::fs::File::open(dir.join(&name)).await.ok()
    } else {
        None
    };
    let Some(mut file) = file else {
        res.status(404).await?;
        res.headers(&[("content-type", "text/plain")]).await?;
        res.stream.write(b"not found\n").await?;
        return res.end().await;
    };
    let len = file.metadata().await?.len().to_string();
    let disposition = format!("attachment; filename=\"{name}\"");
    res.status(200).await?;
    res.headers(&[
        ("content-type", "application/octet-stream"),
        ("content-disposition", &disposition),
        ("content-length", &len),
    ])
    .await?;
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        res.stream.write(&buf[..n]).await?;
    }
    res.end().await
}

/// Registers the route and serves requests until the relay closes the event stream.
pub async fn run(relay: &Relay, dir: &Path, on_ready: impl FnOnce()) -> Result<(), BoxError> {
    engine::register_routes(
        relay.control_url(),
        &[("GET", "files/:filename", "files::download")],
    )
    .await?;
    let dir = dir.to_path_buf();
    engine::serve(
        relay.control_url(),
        relay.data_url(),
        on_ready,
        move |req, res| download(dir.clone(), req, res),
    )
    .await
}

#[tokio::main]
async fn main() {
    let relay = Relay::from_env();
    let dir = PathBuf::from(std::env::var("FILES_DIR").unwrap_or_else(|_| ".".into()));
    let ready = || {
        println!(
            "file_download ready: GET /files/:filename serves {}",
            dir.display()
        )
    };
    if let Err(e) = run(&relay, &dir, ready).await {
        eprintln!("file_download failed: {e}");
        std::process::exit(1);
    }
}
