//! Live updates of a served document, pushed to the nodes that read it
//! (`aspen/docs-push/1`): what gossip did for iroh-docs' live engine, on one stream per
//! reader and owner node, from endpoints the configuration names.
//!
//! The reader opens a stream and sends one message (a 4-byte big-endian length, then the
//! bytes, as on every Aspen stream): the document's 32-byte namespace id. The owner node
//! answers one message of one byte, [`LINKED`] or [`NOT_SERVED`], then sends every entry
//! that lands in its copy of the document from then on, one message each: the signed entry
//! in postcard, the encoding iroh-docs uses on its own wire. Entries carry the document's
//! signature and the author's, and the reader's store checks both before taking one, so a
//! message cannot forge an entry; a duplicate or an older one changes nothing.
//!
//! The reader asks for a reconciliation each time a link is made: what landed before the
//! link is brought by it, what lands after by the link. An owner node never lets a reader
//! hold up its storage thread (which waits on every subscriber): entries go into a queue of
//! [`PUSH_QUEUE`], and a reader that falls that far behind is cut off, to link and
//! reconcile again.

use std::time::Duration;

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::EndpointAddr;
use iroh_docs::{ContentStatus, NamespaceId, SignedEntry};
use tokio::sync::{mpsc, watch};

use crate::peersync::PeerSync;
use crate::FederationError;

/// The protocol's ALPN.
pub const ALPN: &[u8] = b"aspen/docs-push/1";

/// The answer when the owner node serves the document: entries follow.
pub const LINKED: u8 = 0;

/// The answer when it does not (not this node's cluster's document).
pub const NOT_SERVED: u8 = 1;

/// Largest entry message taken. An entry is two signatures, three ids, a length, a
/// timestamp and its key, and this crate's keys are a few dozen bytes.
pub const MAX_ENTRY_BYTES: usize = 4 * 1024;

/// Entries waiting for one reader before it is cut off: seconds of segments even at the
/// exporter's highest rate (50 a second), and a whole reconciliation's worth of a default
/// ring arriving at a following owner node at once.
pub const PUSH_QUEUE: usize = 8 * 1024;

/// How long a reader waits for the owner node's next entry before it links again. The
/// leader writes a heartbeat every 500 ms, and a following owner node receives one with
/// each of its sync rounds (every second).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the request and the answer may take, and one entry's write.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause before linking again after a link failed or ended.
pub const RELINK_PAUSE: Duration = Duration::from_secs(1);

/// Events the storage thread may queue for one link's task (which moves them into the
/// link's queue at once).
const SUBSCRIPTION_EVENTS: usize = 256;

fn stream_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> FederationError + '_ {
    move |e| FederationError::Stack(format!("docs push: {what}: {e}"))
}

/// Decodes a request: the namespace id.
pub fn decode_request(bytes: &[u8]) -> Result<NamespaceId, FederationError> {
    let id: [u8; 32] = bytes.try_into().map_err(|_| {
        FederationError::Stack(format!(
            "docs push: a request is a 32-byte namespace id, not {} bytes",
            bytes.len()
        ))
    })?;
    Ok(NamespaceId::from(id))
}

/// Encodes an entry message.
pub fn encode_entry(entry: &SignedEntry) -> Result<Vec<u8>, FederationError> {
    postcard::to_stdvec(entry).map_err(|e| stream_err("encoding an entry")(&e))
}

/// Decodes an entry message (signatures are checked by the store that takes it).
pub fn decode_entry(bytes: &[u8]) -> Result<SignedEntry, FederationError> {
    postcard::from_bytes(bytes).map_err(|e| stream_err("decoding an entry")(&e))
}

/// Serves links to this node's served documents.
#[derive(Debug, Clone)]
pub struct PushHandler(pub PeerSync);

impl ProtocolHandler for PushHandler {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let peer = connection.remote_id();
        if let Err(e) = serve(&self.0, connection).await {
            tracing::debug!(peer = %peer.fmt_short(), "{e}");
        }
        Ok(())
    }
}

async fn serve(peers: &PeerSync, connection: Connection) -> Result<(), FederationError> {
    let opened = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let (send, mut recv) = connection
            .accept_bi()
            .await
            .map_err(stream_err("accepting"))?;
        let request = aspen_net::read_message(&mut recv, 32)
            .await
            .map_err(stream_err("reading the request"))?;
        Ok::<_, FederationError>((send, recv, decode_request(&request)?))
    });
    let (mut send, _recv, namespace) = opened
        .await
        .map_err(|_| stream_err("request")(&"none within the exchange timeout"))??;
    if !peers.serves(&namespace) {
        let _ = aspen_net::write_message(&mut send, &[NOT_SERVED]).await;
        // Closing the connection at once would drop the answer in flight.
        let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, send.stopped()).await;
        return Ok(());
    }
    let (events_tx, events) = async_channel::bounded(SUBSCRIPTION_EVENTS);
    peers
        .handle()
        .subscribe(namespace, events_tx.clone())
        .await
        .map_err(|e| stream_err("subscribing")(&format!("{e:#}")))?;
    let linked = forward(&connection, &mut send, events).await;
    // Otherwise the storage thread would drop the subscription only at the next entry.
    let _ = peers.handle().unsubscribe(namespace, events_tx).await;
    linked
}

/// Sends what the subscription brings until the reader goes away or falls behind.
async fn forward(
    connection: &Connection,
    send: &mut SendStream,
    events: async_channel::Receiver<iroh_docs::Event>,
) -> Result<(), FederationError> {
    let (queue_tx, mut queue) = link_queue();
    let mover = tokio::spawn(async move {
        if move_events(events, queue_tx).await == Moved::ReaderBehind {
            tracing::debug!("docs push: a reader fell {PUSH_QUEUE} entries behind; cutting it off");
        }
    });
    let _mover = AbortOnDrop(mover);
    write(send, &[LINKED]).await?;
    loop {
        // A reader that goes away ends the link at once, not at the next entry.
        let entry = tokio::select! {
            entry = queue.recv() => entry,
            _ = connection.closed() => return Ok(()),
        };
        let Some(entry) = entry else { break };
        write(send, &encode_entry(&entry)?).await?;
    }
    let _ = send.finish();
    Ok(())
}

/// A link's queue of entries waiting to be sent: [`PUSH_QUEUE`] of them.
fn link_queue() -> (mpsc::Sender<SignedEntry>, mpsc::Receiver<SignedEntry>) {
    mpsc::channel(PUSH_QUEUE)
}

/// Why [`move_events`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// The subscription ended.
    SubscriptionEnded,
    /// The queue was full: the reader is [`PUSH_QUEUE`] entries behind.
    ReaderBehind,
}

/// Moves a subscription's entries into a link's queue (of [`PUSH_QUEUE`]) as they come,
/// so the storage thread never waits on the reader; stops when the queue is full, which
/// drops the subscription and, once the queue is sent, ends the link.
async fn move_events(
    events: async_channel::Receiver<iroh_docs::Event>,
    queue: mpsc::Sender<SignedEntry>,
) -> Moved {
    while let Ok(event) = events.recv().await {
        let entry = match event {
            iroh_docs::Event::LocalInsert { entry, .. } => entry,
            iroh_docs::Event::RemoteInsert { entry, .. } => entry,
        };
        if queue.try_send(entry).is_err() {
            return Moved::ReaderBehind;
        }
    }
    Moved::SubscriptionEnded
}

async fn write(send: &mut SendStream, bytes: &[u8]) -> Result<(), FederationError> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, aspen_net::write_frame(send, bytes))
        .await
        .map_err(|_| stream_err("writing")(&"no progress within the exchange timeout"))?
        .map_err(stream_err("writing"))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a link to `owner` for `namespace` until `stop` turns true, taking every entry it
/// pushes into this node's copy; calls `linked` each time a link is made (the caller
/// reconciles then) and `failed` with the reason each time one fails.
pub async fn follow(
    peers: PeerSync,
    namespace: NamespaceId,
    owner: EndpointAddr,
    linked: impl Fn(),
    failed: impl Fn(&FederationError),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            result = link(&peers, namespace, &owner, &linked) => {
                if let Err(e) = result {
                    failed(&e);
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RELINK_PAUSE) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One link: returns when it ends.
async fn link(
    peers: &PeerSync,
    namespace: NamespaceId,
    owner: &EndpointAddr,
    linked: &impl Fn(),
) -> Result<(), FederationError> {
    let opened = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let connection = peers
            .endpoint()
            .connect(owner.clone(), ALPN)
            .await
            .map_err(stream_err("connecting"))?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(stream_err("opening"))?;
        aspen_net::write_frame(&mut send, namespace.as_bytes())
            .await
            .map_err(stream_err("asking"))?;
        let answer = aspen_net::read_message(&mut recv, 1)
            .await
            .map_err(stream_err("reading the answer"))?;
        Ok::<_, FederationError>((connection, send, recv, answer))
    });
    let (_connection, _send, mut recv, answer) = opened
        .await
        .map_err(|_| stream_err("linking")(&"no answer within the exchange timeout"))??;
    if answer == [NOT_SERVED] {
        return Err(FederationError::NotServed {
            node: owner.id.to_string(),
            namespace: namespace.to_string(),
        });
    }
    if answer != [LINKED] {
        return Err(stream_err("linking")(&format!(
            "{} answered {answer:?}, neither linked nor not served",
            owner.id.fmt_short()
        )));
    }
    linked();
    let from = *owner.id.as_bytes();
    loop {
        let bytes = next(&mut recv).await?;
        let entry = decode_entry(&bytes)?;
        if let Err(e) = peers
            .handle()
            .insert_remote(namespace, entry, from, ContentStatus::Complete)
            .await
        {
            // One this node already holds (or a newer one for its key) is no news.
            if !matches!(
                e.downcast_ref::<iroh_docs::InsertError>(),
                Some(iroh_docs::InsertError::NewerEntryExists)
            ) {
                return Err(stream_err("taking an entry")(&format!("{e:#}")));
            }
        }
    }
}

async fn next(recv: &mut RecvStream) -> Result<Vec<u8>, FederationError> {
    tokio::time::timeout(IDLE_TIMEOUT, aspen_net::read_message(recv, MAX_ENTRY_BYTES))
        .await
        .map_err(|_| stream_err("reading")(&format!("nothing for {IDLE_TIMEOUT:?}")))?
        .map_err(stream_err("reading"))
}

#[cfg(test)]
mod tests;
