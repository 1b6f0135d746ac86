//! HTTP ingress routes registered by the control engine (see `docs/control-api.md`): path
//! patterns such as `files/:filename`, matched against public requests; query strings into
//! maps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::route::{decode_path_segment, percent_decode, SegmentError};

/// Most routes a relay holds.
pub const MAX_ROUTES: usize = 1024;
/// Longest route pattern.
pub const MAX_PATTERN_LEN: usize = 512;

/// One route as the engine registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub method: String,
    pub path: String,
    pub route_id: String,
}

/// A compiled route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressRoute {
    pub spec: RouteSpec,
    method: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl IngressRoute {
    /// Compiles a route; the error says what is wrong with it.
    pub fn compile(spec: RouteSpec) -> Result<IngressRoute, String> {
        let method = spec.method.to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("invalid method {:?}", spec.method));
        }
        if spec.path.len() > MAX_PATTERN_LEN {
            return Err("path pattern too long".into());
        }
        if spec.route_id.is_empty() {
            return Err("route_id must not be empty".into());
        }
        let mut segments = Vec::new();
        for seg in spec
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
        {
            match seg.strip_prefix(':') {
                Some("") => return Err(format!("empty parameter name in {:?}", spec.path)),
                Some(name) => segments.push(Segment::Param(name.to_string())),
                None => segments.push(Segment::Literal(seg.to_string())),
            }
        }
        Ok(IngressRoute {
            spec,
            method,
            segments,
        })
    }

    /// Matches `method` and a request `path` (before `?`); returns the path parameters, or
    /// why one of them cannot be handed to a function (the request is then refused, not
    /// passed on with a smuggled separator).
    pub fn matches(&self, method: &str, path: &str) -> Option<PathParams> {
        if !self.method.eq_ignore_ascii_case(method) {
            return None;
        }
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        if self
            .segments
            .iter()
            .zip(&parts)
            .any(|(seg, part)| matches!(seg, Segment::Literal(l) if l != part))
        {
            return None;
        }
        let mut params = BTreeMap::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            if let Segment::Param(name) = seg {
                match decode_path_segment(part) {
                    Ok(v) => params.insert(name.clone(), v),
                    Err(e) => return Some(Err(e)),
                };
            }
        }
        Some(Ok(params))
    }
}

/// A matched route's path parameters, or why one cannot be handed to a function.
pub type PathParams = Result<BTreeMap<String, String>, SegmentError>;

/// Finds the first route matching the request.
pub fn find_route<'a>(
    routes: &'a [IngressRoute],
    method: &str,
    path: &str,
) -> Option<(&'a IngressRoute, PathParams)> {
    routes
        .iter()
        .find_map(|r| r.matches(method, path).map(|p| (r, p)))
}

/// Parses a query string into a map (percent-decoded; later duplicates win; undecodable
/// pairs are skipped).
pub fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str) -> IngressRoute {
        IngressRoute::compile(RouteSpec {
            method: method.into(),
            path: path.into(),
            route_id: "r".into(),
        })
        .unwrap()
    }

    #[test]
    fn matches_params_and_literals() {
        let r = route("GET", "files/:filename");
        let p = r.matches("GET", "/files/report%20q1.pdf").unwrap().unwrap();
        assert_eq!(p["filename"], "report q1.pdf");
        let p = r.matches("GET", "/files/a+b").unwrap().unwrap();
        assert_eq!(p["filename"], "a+b", "'+' in a path is a plus sign");
        assert_eq!(
            r.matches("GET", "/files/..%2Fetc%2Fpasswd"),
            Some(Err(SegmentError::Separator))
        );
        assert_eq!(
            r.matches("GET", "/files/a%00"),
            Some(Err(SegmentError::Separator))
        );
        assert!(r.matches("POST", "/files/x").is_none());
        assert!(r.matches("GET", "/files").is_none());
        assert!(r.matches("GET", "/files/a/b").is_none());
        assert!(r.matches("GET", "/other/x").is_none());
        let root = route("get", "/");
        assert!(root.matches("GET", "/").is_some());
        assert!(IngressRoute::compile(RouteSpec {
            method: "G T".into(),
            path: "x".into(),
            route_id: "r".into()
        })
        .is_err());
        assert!(IngressRoute::compile(RouteSpec {
            method: "GET".into(),
            path: "a/:".into(),
            route_id: "r".into()
        })
        .is_err());
    }

    #[test]
    fn query_maps() {
        let q = query_params("a=1&b=x%20y&flag&bad=%zz");
        assert_eq!(q["a"], "1");
        assert_eq!(q["b"], "x y");
        assert_eq!(q["flag"], "");
        assert!(!q.contains_key("bad"));
    }
}
