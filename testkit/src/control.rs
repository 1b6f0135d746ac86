//! The control API of a running [`Relay`]: one request at a time over [`http_request`],
//! with the relay's bearer token when it has one.

use serde_json::Value;

use crate::http::{http_request, HttpResponse};
use crate::relay::Relay;

/// A channel as `POST /v1/channels` created it.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub id: String,
    /// The writer ref's key (opens `dir=write` only).
    pub writer_key: String,
    /// The reader ref's key (opens `dir=read` only).
    pub reader_key: String,
    /// The whole response body.
    pub raw: Value,
}

impl ChannelInfo {
    /// The key for the `dir` end (`read` or `write`).
    pub fn key(&self, dir: &str) -> &str {
        match dir {
            "write" => &self.writer_key,
            "read" => &self.reader_key,
            _ => panic!("direction {dir:?}: read or write"),
        }
    }

    /// The data-plane path of the `dir` end, with that end's key.
    pub fn path(&self, dir: &str) -> String {
        crate::ws::ws_path(&self.id, self.key(dir), dir)
    }
}

impl Relay {
    /// One control request (`Authorization: Bearer` from `self.token`, JSON `body`).
    pub fn control(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        let auth;
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(t) = &self.token {
            auth = format!("Bearer {t}");
            headers.push(("Authorization", auth.as_str()));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http_request(
            self.control,
            method,
            path,
            &headers,
            body.map(|b| b.as_bytes()),
        )
    }

    /// POST /v1/channels with no body, asserting 201.
    pub fn create(&self) -> ChannelInfo {
        self.create_with(None)
    }

    /// POST /v1/channels with `body`, asserting 201.
    pub fn create_with(&self, body: Option<&str>) -> ChannelInfo {
        let r = self.control("POST", "/v1/channels", body);
        assert_eq!(r.status, 201, "POST /v1/channels {body:?}: {}", r.text());
        let v = r.json();
        let id = v["channel_id"].as_str().expect("channel_id").to_string();
        let key = |end: &str| {
            assert_eq!(v[end]["channel_id"], id.as_str(), "{end} ref: {v}");
            v[end]["access_key"]
                .as_str()
                .expect("access_key")
                .to_string()
        };
        ChannelInfo {
            writer_key: key("writer"),
            reader_key: key("reader"),
            id,
            raw: v,
        }
    }

    /// GET /v1/channels/{id}, asserting 200.
    pub fn state(&self, id: &str) -> Value {
        let r = self.control("GET", &format!("/v1/channels/{id}"), None);
        assert_eq!(r.status, 200, "GET channel {id}: {}", r.text());
        r.json()
    }

    /// DELETE /v1/channels/{id}; returns the status.
    pub fn delete(&self, id: &str) -> u16 {
        self.control("DELETE", &format!("/v1/channels/{id}"), None)
            .status
    }

    /// GET /metrics (Prometheus text), asserting 200.
    pub fn metrics(&self) -> String {
        let r = self.control("GET", "/metrics", None);
        assert_eq!(r.status, 200, "GET /metrics");
        r.text()
    }

    /// One metric's value (summed over labels); 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics(), name).unwrap_or(0.0)
    }
}

/// Sum of all samples of a metric (with or without labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let rest = match line.strip_prefix(name) {
            Some(r) => r,
            None => continue,
        };
        let value = if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(i) => r[i + 1..].trim(),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest.trim()
        } else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sum_adds_labelled_samples() {
        let text = "# HELP x\nx_total 2\nx_total{shard=\"1\"} 3\nx_totalish 100\n";
        assert_eq!(metric_sum(text, "x_total"), Some(5.0));
        assert_eq!(metric_sum(text, "y_total"), None);
    }
}
