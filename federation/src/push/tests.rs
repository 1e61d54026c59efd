//! Tests of the push protocol against real endpoints and docs stores.

use super::*;
use crate::peersync::SYNC_TIMEOUT;
use crate::stack::DocsStack;
use iroh::Endpoint;
use iroh_docs::{Capability, NamespaceSecret};

async fn bind() -> Endpoint {
    let access = aspen_net::Access::open();
    let addr = "127.0.0.1:0".parse().unwrap();
    aspen_net::bind_endpoint(iroh::SecretKey::generate(), addr, false, &access)
        .await
        .unwrap()
}

async fn subscribers(stack: &DocsStack, namespace: NamespaceId) -> usize {
    let state = stack.peers.handle().get_state(namespace).await.unwrap();
    state.subscribers
}

/// A docs stack on its own endpoint, serving the stack's protocols.
struct Node {
    endpoint: Endpoint,
    stack: DocsStack,
    router: iroh::protocol::Router,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = bind().await;
        let stack = DocsStack::spawn(&endpoint, dir.path()).await.unwrap();
        let mut router = iroh::protocol::Router::builder(endpoint.clone());
        for (alpn, handler) in stack.handlers() {
            router = router.accept(alpn, handler);
        }
        let router = router.spawn();
        Node {
            endpoint,
            stack,
            router,
            _dir: dir,
        }
    }

    async fn hold(&self, capability: Capability) -> iroh_docs::api::Doc {
        let doc = self.stack.docs.import_namespace(capability).await.unwrap();
        self.stack.peers.open(doc.id()).await.unwrap();
        doc
    }

    fn addr(&self) -> iroh::EndpointAddr {
        let addrs = self.endpoint.bound_sockets().into_iter();
        iroh::EndpointAddr::new(self.endpoint.id()).with_addrs(addrs.map(iroh::TransportAddr::Ip))
    }

    async fn stop(self) {
        self.router.shutdown().await.unwrap();
        self.stack.close().await;
    }
}

/// Reconciliation serves only the documents a node serves (its own cluster's): of a
/// document it merely holds, such as one it imports, nothing reaches a peer that asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_serves_only_the_served_document() {
    let owner = Node::start().await;
    let served = NamespaceSecret::from_bytes(&[5; 32]);
    let held = NamespaceSecret::from_bytes(&[6; 32]);
    let author = owner.stack.docs.author_create().await.unwrap();
    for secret in [&served, &held] {
        let doc = owner.hold(Capability::Write(secret.clone())).await;
        owner
            .stack
            .put(&doc, author, &b"k"[..], &b"v"[..])
            .await
            .unwrap();
    }
    owner.stack.peers.serve(served.id());

    let reader = Node::start().await;
    for secret in [&served, &held] {
        reader.hold(Capability::Read(secret.id())).await;
    }
    let peers = &reader.stack.peers;
    let got = peers
        .reconcile(served.id(), owner.addr(), SYNC_TIMEOUT)
        .await;
    assert!(got.is_ok(), "{got:?}");
    // The refusal itself is not seen here: iroh-docs reports the close after it, which
    // `closed_after_the_end` takes for a finished exchange (see there).
    let _ = peers.reconcile(held.id(), owner.addr(), SYNC_TIMEOUT).await;
    let docs = &reader.stack.docs;
    let count = |id: NamespaceId| async move {
        let doc = docs.open(id).await.unwrap().unwrap();
        let entries = doc.get_many(iroh_docs::store::Query::all()).await.unwrap();
        futures::StreamExt::count(entries).await
    };
    assert_eq!(count(served.id()).await, 1, "the served document came over");
    assert_eq!(count(held.id()).await, 0, "the held one did not");
    reader.stop().await;
    owner.stop().await;
}

/// A reader that links and goes away leaves nothing behind on the owner node: its
/// subscription to the owner's storage thread ends with the connection, not at the
/// next entry. A document nobody serves is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_holds_a_subscription_only_while_the_reader_is_there() {
    let owner = Node::start().await;
    let namespace = owner
        .hold(Capability::Write(NamespaceSecret::from_bytes(&[3; 32])))
        .await
        .id();
    owner.stack.peers.serve(namespace);
    let (stack, addr) = (&owner.stack, owner.addr());
    let before = subscribers(stack, namespace).await;

    let reader = bind().await;
    let ask = |namespace: NamespaceId| {
        let (reader, addr) = (reader.clone(), addr.clone());
        async move {
            let conn = reader.connect(addr, ALPN).await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            aspen_net::write_frame(&mut send, namespace.as_bytes())
                .await
                .unwrap();
            let answer = aspen_net::read_message(&mut recv, 1).await.unwrap();
            (conn, send, recv, answer)
        }
    };
    let unknown = NamespaceSecret::from_bytes(&[4; 32]).id();
    assert_eq!(ask(unknown).await.3, vec![NOT_SERVED]);

    let (conn, send, recv, answer) = ask(namespace).await;
    assert_eq!(answer, vec![LINKED]);
    assert_eq!(subscribers(stack, namespace).await, before + 1);
    conn.close(0u32.into(), b"gone");
    drop((send, recv));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while subscribers(stack, namespace).await != before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link's subscription outlived its reader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    owner.stop().await;
}

/// An entry of `namespace` by `author` whose push message is exactly `bytes` long (its
/// key is padded to make it so).
fn entry_of_size(namespace: &NamespaceSecret, bytes: usize) -> SignedEntry {
    let author = iroh_docs::Author::from_bytes(&[9; 32]);
    let make = |key_len: usize| {
        let id = iroh_docs::RecordIdentifier::new(namespace.id(), author.id(), vec![b'k'; key_len]);
        let record = iroh_docs::Record::new(iroh_blobs::Hash::new(b"v"), 1, 1);
        iroh_docs::Entry::new(id, record).sign(namespace, &author)
    };
    let mut key_len = bytes.saturating_sub(200);
    loop {
        let len = encode_entry(&make(key_len)).unwrap().len();
        match len.cmp(&bytes) {
            std::cmp::Ordering::Equal => return make(key_len),
            std::cmp::Ordering::Less => key_len += bytes - len,
            std::cmp::Ordering::Greater => key_len -= len - bytes,
        }
    }
}

/// An owner node that links every reader and sends it the given messages, then holds the
/// link open.
#[derive(Debug, Clone)]
struct ScriptedOwner(Vec<Vec<u8>>);

impl ProtocolHandler for ScriptedOwner {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let (mut send, mut recv) = connection.accept_bi().await?;
        let _ = aspen_net::read_message(&mut recv, 32).await;
        let _ = aspen_net::write_frame(&mut send, &[LINKED]).await;
        for message in &self.0 {
            let _ = aspen_net::write_frame(&mut send, message).await;
        }
        connection.closed().await;
        Ok(())
    }
}

/// How a link failed, as a test sees it.
#[derive(Debug)]
enum Failure {
    /// [`FederationError::NotServed`]: the node and the document named.
    Refused(String, String),
    Other(String),
}

/// Follows `owner` from `reader` until the first failure, which it returns, with how many
/// links were made.
async fn first_failure(
    reader: &Node,
    namespace: NamespaceId,
    owner: EndpointAddr,
) -> (Failure, usize) {
    let (stop_tx, stop) = watch::channel(false);
    let (failed_tx, mut failed) = mpsc::unbounded_channel();
    let links = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = links.clone();
    let task = tokio::spawn(follow(
        reader.stack.peers.clone(),
        namespace,
        owner,
        move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
        move |e| {
            let _ = failed_tx.send(match e {
                FederationError::NotServed { node, namespace } => {
                    Failure::Refused(node.clone(), namespace.clone())
                }
                e => Failure::Other(e.to_string()),
            });
        },
        stop,
    ));
    let first = tokio::time::timeout(Duration::from_secs(20), failed.recv())
        .await
        .expect("a failure within 20 s")
        .unwrap();
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    (first, links.load(std::sync::atomic::Ordering::SeqCst))
}

/// An entry message of exactly [`MAX_ENTRY_BYTES`] is taken into the reader's copy; one of
/// a byte more ends the link with the limit named, before any of it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_message_is_taken_up_to_max_entry_bytes() {
    let secret = NamespaceSecret::from_bytes(&[7; 32]);
    let at_limit = entry_of_size(&secret, MAX_ENTRY_BYTES);
    let over = entry_of_size(&secret, MAX_ENTRY_BYTES + 1);
    let messages = vec![
        encode_entry(&at_limit).unwrap(),
        encode_entry(&over).unwrap(),
    ];
    assert_eq!(messages[0].len(), MAX_ENTRY_BYTES);
    assert_eq!(messages[1].len(), MAX_ENTRY_BYTES + 1);

    let endpoint = bind().await;
    let owner = iroh::protocol::Router::builder(endpoint.clone())
        .accept(ALPN, ScriptedOwner(messages))
        .spawn();
    let addr = iroh::EndpointAddr::new(endpoint.id()).with_addrs(
        endpoint
            .bound_sockets()
            .into_iter()
            .map(iroh::TransportAddr::Ip),
    );
    let reader = Node::start().await;
    let doc = reader.hold(Capability::Read(secret.id())).await;

    let (failure, links) = first_failure(&reader, secret.id(), addr).await;
    assert_eq!(links, 1);
    let Failure::Other(text) = failure else {
        panic!("expected a read failure, got {failure:?}")
    };
    assert!(
        text.contains(&format!("over the limit of {MAX_ENTRY_BYTES}")),
        "{text}"
    );
    let held = doc
        .get_exact(at_limit.author(), at_limit.key().to_vec(), false)
        .await
        .unwrap();
    assert!(held.is_some(), "the entry at the limit was taken");
    let held = doc
        .get_exact(over.author(), over.key().to_vec(), false)
        .await
        .unwrap();
    assert!(held.is_none(), "the entry over the limit was not");
    reader.stop().await;
    owner.shutdown().await.unwrap();
}

/// A node that does not serve the document answers so, and the reader reports it as a
/// refusal naming the node and the document (the importer's sync error), not as a link
/// that merely failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_serve_the_document_is_reported_as_refusing_it() {
    let owner = Node::start().await;
    let secret = NamespaceSecret::from_bytes(&[8; 32]);
    owner.hold(Capability::Write(secret.clone())).await;
    let reader = Node::start().await;
    reader.hold(Capability::Read(secret.id())).await;

    let (failure, links) = first_failure(&reader, secret.id(), owner.addr()).await;
    assert_eq!(links, 0);
    let Failure::Refused(node, namespace) = failure else {
        panic!("expected a refusal, got {failure:?}")
    };
    assert_eq!(node, owner.endpoint.id().to_string());
    assert_eq!(namespace, secret.id().to_string());
    reader.stop().await;
    owner.stop().await;
}

/// The owner node queues up to [`PUSH_QUEUE`] entries for a reader that does not read,
/// and cuts it off at the next one.
#[tokio::test]
async fn a_reader_is_cut_off_only_past_push_queue_entries() {
    let secret = NamespaceSecret::from_bytes(&[10; 32]);
    let entry = entry_of_size(&secret, 400);
    for (sent, expect) in [
        (PUSH_QUEUE, Moved::SubscriptionEnded),
        (PUSH_QUEUE + 1, Moved::ReaderBehind),
    ] {
        let (events_tx, events) = async_channel::bounded(SUBSCRIPTION_EVENTS);
        let (queue_tx, mut queue) = link_queue();
        let mover = tokio::spawn(move_events(events, queue_tx));
        for _ in 0..sent {
            let event = iroh_docs::Event::LocalInsert {
                namespace: secret.id(),
                entry: entry.clone(),
            };
            if events_tx.send(event).await.is_err() {
                break;
            }
        }
        drop(events_tx);
        assert_eq!(mover.await.unwrap(), expect, "after {sent} entries");
        let mut queued = 0;
        while queue.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, PUSH_QUEUE, "after {sent} entries");
    }
}
