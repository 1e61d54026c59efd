//! A bound on how long a value's stream may go without a byte: a transfer whose other
//! side stopped sending (a client that hung, a node that stalled) ends with an error that
//! says so, instead of holding its upload slot, its stream and its temporary file forever.

use std::time::Duration;

use futures::StreamExt;

use super::ValueStream;

/// Longest a value's bytes may stop coming, in either direction, before the transfer is
/// abandoned as stalled: a put then writes nothing, a read ends without its last bytes.
/// Generous for any working network; QUIC's idle timeout alone does not notice a peer that
/// is alive but sends nothing.
pub const VALUE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `stream`, ending with an error naming `what` when no chunk comes within `limit` of the
/// last one (or of the first poll). Time the consumer takes between chunks is not counted.
pub fn stall_bounded(stream: ValueStream, limit: Duration, what: &'static str) -> ValueStream {
    futures::stream::unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout(limit, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(format!(
                    "{what} stalled: no bytes for {limit:?} (the limit between two pieces)"
                )),
                None,
            )),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks every `gap`, `n` of them.
    fn paced(n: usize, gap: Duration) -> ValueStream {
        futures::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((Ok(bytes::Bytes::from(vec![i as u8; 3])), i + 1))
        })
        .boxed()
    }

    #[tokio::test]
    async fn pieces_inside_the_limit_pass_whole_and_a_silence_past_it_ends_the_stream() {
        let limit = Duration::from_millis(300);
        // Well inside the limit: every piece arrives, then the end.
        let got: Vec<_> = stall_bounded(paced(4, Duration::from_millis(5)), limit, "the value")
            .collect()
            .await;
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|c| c.as_ref().is_ok_and(|c| c.len() == 3)));

        // Past it: the pieces before the silence, then an error naming what stalled.
        let silent = paced(1, Duration::ZERO).chain(futures::stream::pending());
        let got: Vec<_> = stall_bounded(silent.boxed(), limit, "the value")
            .collect()
            .await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].is_ok());
        let e = got[1].as_ref().unwrap_err();
        assert!(
            e.contains("the value stalled") && e.contains("300ms"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_error_from_the_stream_ends_it_as_it_is() {
        let failing = futures::stream::iter([Err("cut off".to_string())]).boxed();
        let got: Vec<_> = stall_bounded(failing, VALUE_STALL_TIMEOUT, "the value")
            .collect()
            .await;
        assert_eq!(got, vec![Err("cut off".to_string())]);
    }
}
