//! gRPC requests per method and status code, and their durations: a tower
//! layer on the tonic servers ([`crate::server::grpc_server`] adds it to
//! both ports of every server binary).
//!
//! A gRPC status travels in the response's trailers, or in its headers when
//! the reply is an error with no body, so a request is counted when its
//! response body ends (or is dropped), not when the handler returns: the
//! duration covers a streamed body too. A body dropped before its trailers
//! (the client went away) counts as `CANCELLED`.
//!
//! The method label is the request path (`/pact.v1.Kv/Get`) only for
//! requests some service answered; requests refused before any service
//! took them (unknown path: `UNIMPLEMENTED`; refused by the peer port's
//! certificate check: `PERMISSION_DENIED` / `UNAUTHENTICATED`) are counted
//! under `other`, so whoever can reach a port cannot grow the label set.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

/// Adds [`GrpcMetrics`] around a server's routes.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// Counts each request into [`super::ProcessMetrics::grpc_requests`] and
/// [`super::ProcessMetrics::grpc_seconds`].
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, ResBody> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<Counted<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = Call {
            method: req.uri().path().to_owned(),
            start: Instant::now(),
            code: None,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            call: Some(call),
        }
    }
}

/// One request being served; counted when dropped, with the status seen
/// by then.
struct Call {
    method: String,
    start: Instant,
    code: Option<i32>,
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(CANCELLED);
        record(&self.method, code, self.start.elapsed().as_secs_f64());
    }
}

const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;

fn record(path: &str, code: i32, seconds: f64) {
    let Some(m) = super::process() else { return };
    let method = match code {
        // Unimplemented, PermissionDenied, Unauthenticated: see the module doc.
        12 | 7 | 16 => "other",
        _ => path,
    };
    m.grpc_requests
        .with_label_values(&[method, code_name(code)])
        .inc();
    m.grpc_seconds.with_label_values(&[method]).observe(seconds);
}

/// The `grpc-status` in `headers` (a trailers-only reply, or trailers).
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

pin_project! {
    /// The response future of [`GrpcMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<Counted<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let r = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match r {
            Ok(resp) => {
                if let Some(c) = call.as_mut() {
                    c.code = grpc_status(resp.headers());
                }
                Ok(resp.map(|inner| Counted { inner, call }))
            }
            Err(e) => {
                if let Some(c) = call.as_mut() {
                    c.code = Some(UNKNOWN);
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// A response body that counts its request when it ends.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = ready!(this.inner.poll_frame(cx));
        match &r {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // The trailers end a gRPC response.
                    if let Some(mut c) = this.call.take() {
                        c.code = grpc_status(trailers).or(c.code).or(Some(UNKNOWN));
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(mut c) = this.call.take() {
                    c.code = c.code.or(Some(UNKNOWN));
                }
            }
            None => {
                if let Some(mut c) = this.call.take() {
                    // Ended without trailers: only a trailers-only reply
                    // (status in the headers) should.
                    c.code = c.code.or(Some(UNKNOWN));
                }
            }
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(method: &str, code: &str) -> u64 {
        super::super::process()
            .unwrap()
            .grpc_requests
            .with_label_values(&[method, code])
            .get()
    }

    #[test]
    fn a_call_counts_once_with_the_status_it_saw_and_unknown_paths_pool() {
        let path = "/pact.test.Svc/Counted";
        let before_ok = count(path, "OK");
        drop(Call {
            method: path.into(),
            start: Instant::now(),
            code: Some(0),
        });
        assert_eq!(count(path, "OK"), before_ok + 1);
        // Dropped before any status: the client went away.
        let before_cancelled = count(path, "CANCELLED");
        drop(Call {
            method: path.into(),
            start: Instant::now(),
            code: None,
        });
        assert_eq!(count(path, "CANCELLED"), before_cancelled + 1);
        // A path no service knows is not a label of its own.
        let before_other = count("other", "UNIMPLEMENTED");
        drop(Call {
            method: "/no.Such/Thing".into(),
            start: Instant::now(),
            code: Some(12),
        });
        assert_eq!(count("other", "UNIMPLEMENTED"), before_other + 1);
        let families = super::super::process().unwrap().registry.gather();
        let labels: Vec<&str> = families
            .iter()
            .filter(|f| f.name().starts_with("pact_grpc_"))
            .flat_map(|f| f.get_metric())
            .flat_map(|m| m.get_label())
            .map(|l| l.value())
            .collect();
        assert!(labels.contains(&path), "{labels:?}");
        assert!(!labels.contains(&"/no.Such/Thing"), "{labels:?}");
    }

    #[test]
    fn status_comes_from_headers_or_trailers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("10"));
        assert_eq!(grpc_status(&h), Some(10));
        assert_eq!(code_name(10), "ABORTED");
        h.insert("grpc-status", http::HeaderValue::from_static("junk"));
        assert_eq!(grpc_status(&h), None);
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
