//! A minimal example *engine* for chanrelay's HTTP endpoints (see `docs/control-api.md`) —
//! an example, not part of the relay. It registers routes on the control API, subscribes to the
//! relay's event stream, and for each routed request calls a handler with an
//! iii-shaped request (`path_params`, `query_params`, `headers`, the request body as a
//! [`ChannelReader`]) and a response (`status`, `headers`, then body bytes on a
//! [`ChannelWriter`]) — what the iii SDK's `http()` wrapper gives a function.

use std::collections::BTreeMap;
use std::future::Future;

use chanrelay_client::{ChannelReader, ChannelRef, ChannelWriter};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One routed request, as the relay announces it.
#[derive(Debug, Deserialize)]
pub struct HttpRequestEvent {
    pub request_id: String,
    pub route_id: String,
    pub method: String,
    pub path: String,
    pub path_params: BTreeMap<String, String>,
    pub query_params: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub request_body: ChannelRef,
    pub response: ChannelRef,
}

/// What a handler gets: the request and its body.
pub struct HttpRequest {
    pub event: HttpRequestEvent,
    pub body: ChannelReader,
}

/// What a handler answers with (like iii's `HttpResponse`).
pub struct HttpResponse {
    pub stream: ChannelWriter,
}

impl HttpResponse {
    /// Sets the status (before the first body byte).
    pub async fn status(&mut self, code: u16) -> Result<(), BoxError> {
        let msg = json!({"type": "set_status", "status_code": code}).to_string();
        Ok(self.stream.send_message(&msg).await?)
    }

    /// Sets response headers (before the first body byte).
    pub async fn headers(&mut self, headers: &[(&str, &str)]) -> Result<(), BoxError> {
        let map: BTreeMap<_, _> = headers.iter().cloned().collect();
        let msg = json!({"type": "set_headers", "headers": map}).to_string();
        Ok(self.stream.send_message(&msg).await?)
    }

    /// Ends the response.
    pub async fn end(mut self) -> Result<(), BoxError> {
        Ok(self.stream.close().await?)
    }
}

/// Replaces the relay's route table: `(method, path pattern, route_id)`.
pub async fn register_routes(
    control_url: &str,
    routes: &[(&str, &str, &str)],
) -> Result<(), BoxError> {
    let body: Vec<_> = routes
        .iter()
        .map(|(m, p, id)| json!({"method": m, "path": p, "route_id": id}))
        .collect();
    let body = serde_json::to_vec(&body)?;
    let host = control_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let head = format!(
        "PUT /v1/routes HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("PUT /v1/routes refused: {answer}").into());
    }
    Ok(())
}

/// Subscribes to the event stream and runs `handler` for every request, each in its own
/// task. Returns when the relay closes the stream. `on_subscribed` runs once the
/// subscription is live.
pub async fn serve<H, F>(
    control_url: &str,
    data_url: &str,
    on_subscribed: impl FnOnce(),
    handler: H,
) -> Result<(), BoxError>
where
    H: Fn(HttpRequest, HttpResponse) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let events_url = format!(
        "{}/v1/events",
        control_url
            .replacen("http://", "ws://", 1)
            .trim_end_matches('/')
    );
    let (mut events, _) = tokio_tungstenite::connect_async(events_url).await?;
    on_subscribed();
    while let Some(msg) = events.next().await {
        let msg = msg?;
        if !msg.is_text() {
            continue;
        }
        let event: HttpRequestEvent = serde_json::from_str(msg.to_text()?)?;
        let body = ChannelReader::new(data_url, &event.request_body);
        let response = HttpResponse {
            stream: ChannelWriter::new(data_url, &event.response),
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let id = event.request_id.clone();
            if let Err(e) = handler(HttpRequest { event, body }, response).await {
                eprintln!("request {id} failed: {e}");
            }
        });
    }
    Ok(())
}
