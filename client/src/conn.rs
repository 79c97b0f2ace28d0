//! How the client reaches a node: a [`Conn`] is a tonic channel to the
//! node's address, and, for the node of the process the client runs in, it
//! may also hold that node's own service ([`Local`]), which answers the
//! paths it serves without the network.
//!
//! Why: in the one-process-per-node server a coordinator relays every read,
//! prepare and decision to the shard leader, and about one shard leader in
//! three is on the coordinator leader's own node. Over loopback each such
//! call still pays HTTP/2 framing, two socket writes and reads, and hand-offs
//! between the connection tasks and the handler (about 0.2 ms at one client;
//! docs/performance.md, "In-process calls"). In process it is a function
//! call into the same handler, with the same protobuf encoding, message
//! size limits and request metrics. A caller that gives up drops the
//! handler's future, as a stream reset does over the network, so the
//! handlers' cancel-safety is what it was.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pact_common::NodeId;
use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;

/// The error type of a [`Conn`]: the channel's or the local service's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// A gRPC service of this process, answering the paths under `prefix`
/// (`/pact.v1.Participant/`) for node `node`.
#[derive(Clone)]
pub struct Local {
    node: NodeId,
    prefix: String,
    call: Arc<dyn Fn(http::Request<Body>) -> Reply + Send + Sync>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Local({}, {})", self.node, self.prefix)
    }
}

impl Local {
    /// `svc` serves the gRPC paths under `prefix` for `node`, the node this
    /// process runs.
    pub fn new<S, B>(node: NodeId, prefix: &str, svc: S) -> Local
    where
        S: Service<http::Request<Body>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Local {
            node,
            prefix: prefix.to_string(),
            call: Arc::new(move |req| {
                let mut svc = svc.clone();
                let answer = async move {
                    std::future::poll_fn(|cx| svc.poll_ready(cx))
                        .await
                        .map_err(Into::into)?;
                    let resp = svc.call(req).await.map_err(Into::into)?;
                    Ok(resp.map(Body::new))
                };
                // Over the network a handler that panics loses its own
                // request only (hyper runs it in a task of its own); in
                // process it would unwind through the caller's task, which
                // may be the one that reports the outcome. So a panic is an
                // error of this request, as a reset stream would be.
                Box::pin(async move {
                    use futures::FutureExt;
                    match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
                        Ok(r) => r,
                        Err(_) => Err(BoxError::from(
                            "the in-process service panicked while answering",
                        )),
                    }
                })
            }),
        }
    }

    /// The node whose service this is.
    pub fn node(&self) -> NodeId {
        self.node
    }
}

/// A connection to one node: its channel, and its in-process service if it
/// is this process's node.
#[derive(Clone)]
pub struct Conn {
    net: Channel,
    local: Option<Local>,
}

impl Conn {
    pub(crate) fn new(net: Channel, local: Option<Local>) -> Conn {
        Conn { net, local }
    }
}

impl Service<http::Request<Body>> for Conn {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Reply;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.local.is_some() {
            // Which way a request goes is known only in `call`; the
            // channel's readiness is awaited there if it goes out.
            return Poll::Ready(Ok(()));
        }
        self.net.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> Reply {
        match &self.local {
            Some(l) if req.uri().path().starts_with(&l.prefix) => {
                tracing::trace!(path = req.uri().path(), "answered in process");
                (l.call)(req)
            }
            Some(_) => {
                let mut net = self.net.clone();
                Box::pin(async move {
                    std::future::poll_fn(|cx| net.poll_ready(cx))
                        .await
                        .map_err(BoxError::from)?;
                    net.call(req).await.map_err(Into::into)
                })
            }
            None => {
                let f = self.net.call(req);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Answers every request with status 200 and the request's path as
    /// its body.
    #[derive(Clone)]
    struct Echo;

    impl Service<http::Request<Body>> for Echo {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, std::convert::Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let path = req.uri().path().to_string();
            std::future::ready(Ok(http::Response::new(Body::new(path))))
        }
    }

    /// Panics on every request.
    #[derive(Clone)]
    struct Panics;

    impl Service<http::Request<Body>> for Panics {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<
            Box<dyn Future<Output = Result<http::Response<Body>, std::convert::Infallible>> + Send>,
        >;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            Box::pin(async { panic!("a handler bug") })
        }
    }

    #[tokio::test]
    async fn a_local_handler_that_panics_fails_its_request_only() {
        let net = crate::channel_to("127.0.0.1:1", None).unwrap();
        let local = Local::new(NodeId(7), "/pact.v1.Participant/", Panics);
        let mut conn = Conn::new(net, Some(local));
        let out = conn.call(request("/pact.v1.Participant/Prepare")).await;
        let err = out.expect_err("a panic is an error of the request");
        assert!(err.to_string().contains("panicked"), "{err}");
        // The connection still serves.
        let again = conn.call(request("/pact.v1.Participant/Prepare")).await;
        assert!(again.is_err());
    }

    fn request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(format!("http://127.0.0.1:1{path}"))
            .body(Body::empty())
            .unwrap()
    }

    async fn body(resp: http::Response<Body>) -> String {
        use http_body::Body as _;
        let mut b = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
            if let Ok(data) = frame.unwrap().into_data() {
                out.extend_from_slice(&data);
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn local_paths_are_answered_in_process_and_the_rest_go_out() {
        // Port 1 on loopback: nothing listens, so a request that goes out
        // fails to connect.
        let net = crate::channel_to("127.0.0.1:1", None).unwrap();
        let local = Local::new(NodeId(7), "/pact.v1.Participant/", Echo);
        let mut conn = Conn::new(net.clone(), Some(local));
        std::future::poll_fn(|cx| conn.poll_ready(cx))
            .await
            .unwrap();
        let resp = conn.call(request("/pact.v1.Participant/Decide")).await;
        assert_eq!(body(resp.unwrap()).await, "/pact.v1.Participant/Decide");
        let out = conn.call(request("/pact.v1.Kv/Get")).await;
        assert!(
            out.is_err(),
            "a path the local service does not serve went out"
        );
        // Without a local service everything goes out.
        let mut plain = Conn::new(net, None);
        let out = tokio::time::timeout(Duration::from_secs(5), async {
            std::future::poll_fn(|cx| plain.poll_ready(cx)).await?;
            plain.call(request("/pact.v1.Participant/Decide")).await
        })
        .await;
        assert!(matches!(out, Ok(Err(_))), "nothing listens on port 1");
    }
}
