//! Which requests a connection has in flight, so the listener can close a connection
//! that has none for too long, whatever its HTTP version.
//!
//! [`Tracked`] wraps the connection's service: each request takes an [`InFlight`] guard
//! that lives in its response body ([`Guarded`]) until the body is done or dropped, so a
//! streaming answer (a watch) counts as in flight for as long as it streams.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;

/// The count of one connection's requests in flight; clones share it.
#[derive(Clone, Default)]
pub(super) struct Activity(Arc<watch::Sender<usize>>);

/// One request in flight; dropping it ends the request.
pub(super) struct InFlight(Activity);

impl Activity {
    fn begin(&self) -> InFlight {
        self.0.send_modify(|n| *n += 1);
        InFlight(self.clone())
    }

    /// Completes once the connection has had no request in flight for `limit` at a
    /// stretch.
    pub(super) async fn idle_for(&self, limit: Duration) {
        let mut count = self.0.subscribe();
        loop {
            // The sender lives in `self`, so neither wait can fail.
            let _ = count.wait_for(|n| *n == 0).await;
            let busy = tokio::time::timeout(limit, count.wait_for(|n| *n > 0)).await;
            if busy.is_err() {
                return;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n -= 1);
    }
}

/// A hyper service whose requests count in an [`Activity`] until their response bodies
/// are done.
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Activity,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, R, B> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R, Response = hyper::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = hyper::Response<Guarded<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn call(&self, request: R) -> Self::Future {
        let guard = self.activity.begin();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Guarded {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that holds its request's [`InFlight`] guard.
pub(super) struct Guarded<B> {
    body: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
