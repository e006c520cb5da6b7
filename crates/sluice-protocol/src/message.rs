//! Every frame body of protocol version 1. Names are the contract's names (topic,
//! subscription, lease, attempt…); times are milliseconds (durations) or nanoseconds since
//! the Unix epoch (instants); sizes are bytes.
//!
//! Stop and think before changing: these shapes *are* the wire format (postcard encodes
//! fields in declaration order and enum variants by index). Add variants at the end; never
//! reorder, remove or retype a field without a new protocol version (`docs/protocol.md`).

use serde::{Deserialize, Serialize};

/// One frame. `id` pairs a response with its request: the client picks it, the server echoes
/// it; the server's unsolicited frames (a fatal protocol error) use id 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Request id (client-chosen, unique among its requests in flight).
    pub id: u64,
    /// What the frame carries.
    pub body: Body,
}

impl Frame {
    /// A frame with this id and body.
    pub fn new(id: u64, body: Body) -> Self {
        Self { id, body }
    }
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Client → server, first frame after the preface.
    Hello(Hello),
    /// Server → client, answer to a valid hello.
    Welcome(Welcome),
    /// Client → server: an operation.
    Request(Request),
    /// Server → client: the operation succeeded.
    Response(Response),
    /// Server → client: the operation failed (the connection stays open).
    Failed(WireError),
    /// Either way: the connection is unusable and closes after this frame.
    ProtocolError(String),
}

/// The client's hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Namespace every name of this connection is prefixed with (`?namespace=` in the URL).
    pub namespace: Option<String>,
    /// API token, when the server requires one.
    pub token: Option<String>,
    /// Free-form client description, for the server's logs.
    pub client: String,
}

/// The server's welcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Server name and version.
    pub server: String,
    /// Largest message the server accepts, in bytes.
    pub max_message_size: u64,
    /// Largest frame the server accepts, in bytes.
    pub max_frame: u64,
    /// Most deliveries one receive returns and most messages one publish frame carries.
    pub max_batch: u32,
}

/// An operation. Each maps to one method of the contract (`Backend`, `Publisher`,
/// `Subscriber`, `Delivery`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Publish messages to a topic, each confirmed durable (one result each, in order).
    Publish {
        /// Topic name.
        topic: String,
        /// The messages.
        messages: Vec<WireMessage>,
    },
    /// Open a subscriber on a subscription (answered with its id and configuration).
    OpenSubscriber {
        /// Subscription name.
        subscription: String,
    },
    /// Long-poll: up to `max` deliveries, waiting up to `wait_ms` for the first.
    Receive {
        /// Subscriber id from [`Response::Subscriber`].
        subscriber: u64,
        /// Most deliveries to return.
        max: u32,
        /// Longest wait for the first delivery, in milliseconds.
        wait_ms: u64,
    },
    /// Close a subscriber: its pending receives return, its deliveries stay valid.
    CloseSubscriber {
        /// Subscriber id.
        subscriber: u64,
    },
    /// Settle a delivery with one verb.
    Settle {
        /// Delivery token from [`WireDelivery::token`].
        token: u64,
        /// The verb.
        verb: Verb,
    },
    /// Extend a delivery's lease to `lease_ms` from now.
    ExtendLease {
        /// Delivery token.
        token: u64,
        /// New lease, in milliseconds from now.
        lease_ms: u64,
    },
    /// `Backend::ensure_topic`.
    EnsureTopic {
        /// Topic name.
        topic: String,
        /// Its configuration.
        config: WireTopicConfig,
    },
    /// `Backend::ensure_subscription`.
    EnsureSubscription {
        /// Subscription name.
        subscription: String,
        /// Its configuration.
        config: WireSubscriptionConfig,
    },
    /// `Backend::describe_topic`.
    DescribeTopic {
        /// Topic name.
        topic: String,
    },
    /// `Backend::describe_subscription`.
    DescribeSubscription {
        /// Subscription name.
        subscription: String,
    },
    /// `Backend::list_topics`.
    ListTopics,
    /// `Backend::delete_topic`.
    DeleteTopic {
        /// Topic name.
        topic: String,
    },
    /// `Backend::delete_subscription`.
    DeleteSubscription {
        /// Subscription name.
        subscription: String,
    },
    /// `Backend::stats`.
    Stats {
        /// Subscription name.
        subscription: String,
    },
    /// `Backend::dlq_list`.
    DlqList {
        /// Subscription name.
        subscription: String,
        /// Most messages to return.
        limit: u64,
    },
    /// `Backend::dlq_redrive`.
    DlqRedrive {
        /// Subscription name.
        subscription: String,
        /// Only these ids (empty: all).
        ids: Vec<String>,
        /// At most this many.
        limit: Option<u64>,
        /// Report without moving.
        dry_run: bool,
        /// Pace, messages per second.
        rate_per_second: Option<u32>,
    },
    /// `Backend::dlq_purge`.
    DlqPurge {
        /// Subscription name.
        subscription: String,
    },
    /// Several verbs at once (clients coalesce verbs issued together): answered with
    /// [`Response::Settled`], one result per item, in order.
    SettleBatch {
        /// (delivery token, verb) pairs.
        items: Vec<(u64, Verb)>,
    },
    /// Start pushing deliveries of a subscriber: the server answers with a stream of
    /// [`Response::Deliveries`] frames carrying this request's id, never holding more than
    /// `prefetch` deliveries the client has not yet taken (see [`Request::Credit`]). The
    /// stream ends with `Failed` (for example `Closed` after `CloseSubscriber`).
    Consume {
        /// Subscriber id.
        subscriber: u64,
        /// Most deliveries pushed and not yet taken.
        prefetch: u32,
    },
    /// The client took `n` pushed deliveries (handed them to its caller): the server may push
    /// `n` more. Never answered.
    Credit {
        /// Subscriber id.
        subscriber: u64,
        /// How many were taken.
        n: u32,
    },
    /// `JobStore::load` on the server's job store (in the connection's namespace): answered
    /// with [`Response::JobEntry`].
    JobLoad {
        /// The key.
        key: String,
    },
    /// `JobStore::swap`: answered with [`Response::Swapped`].
    JobSwap {
        /// The key.
        key: String,
        /// The version the write expects (`None`: no live entry).
        expected: Option<u64>,
        /// The document.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Kept this long, in milliseconds.
        ttl_ms: u64,
    },
    /// `JobStore::remove`: answered with [`Response::Removed`].
    JobRemove {
        /// The key.
        key: String,
        /// The version it must still have.
        expected: u64,
    },
    /// `JobStore::scan`: answered with [`Response::JobEntries`].
    JobScan {
        /// Key prefix.
        prefix: String,
        /// Most entries.
        limit: u64,
    },
    /// `LimiterStore::take` on the server's limiter (in the connection's namespace): gives back
    /// `give_back` unused tokens of the global rate limit `name`, then takes up to `want`.
    /// Answered with [`Response::Granted`].
    LimitTake {
        /// The limit's name.
        name: String,
        /// Its rate, tokens per second (finite, above zero).
        per_second: f64,
        /// Its burst (at least 1).
        burst: u32,
        /// Unused tokens returned.
        give_back: u32,
        /// Most tokens to take.
        want: u32,
    },
    /// `LimiterStore::slots` on the server's limiter (in the connection's namespace): gives
    /// back those of `holder`'s slots of the global concurrency bound `name` above `hold`, keeps the
    /// rest held for `ttl_ms`, then takes up to `want` while fewer than `max` are held in all.
    /// Answered with [`Response::Slots`].
    SlotsTake {
        /// The bound's name.
        name: String,
        /// The holder (a worker's id).
        holder: String,
        /// Most slots held by every holder together (at least 1).
        max: u32,
        /// Slots given back.
        hold: u32,
        /// Most slots to take.
        want: u32,
        /// How long the holder's slots stay held without another call, in ms.
        ttl_ms: u64,
    },
    /// `LimiterStore::set_flag` on the server's limiter (in the connection's namespace).
    /// Answered with [`Response::Done`].
    FlagSet {
        /// The flag.
        key: String,
        /// Its value; none: removes it.
        value: Option<String>,
        /// Forgotten after this many ms; none: kept.
        ttl_ms: Option<u64>,
    },
    /// `LimiterStore::flags`: answered with [`Response::Flags`].
    FlagList {
        /// Key prefix.
        prefix: String,
    },
}

/// A delivery verb.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verb {
    /// Done: never deliver again.
    Ack,
    /// Deliver again no earlier than `after_ms` from now.
    Retry {
        /// Delay in milliseconds.
        after_ms: u64,
    },
    /// Give back for immediate redelivery.
    Release,
    /// Move to the dead-letter queue.
    DeadLetter {
        /// Short reason.
        reason: String,
        /// The handler's last error.
        last_error: Option<String>,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Ping`.
    Pong,
    /// Answer to `Publish`: one result per message, in order.
    Published(Vec<Result<Published, WireError>>),
    /// Answer to `OpenSubscriber`.
    Subscriber {
        /// Subscriber id.
        subscriber: u64,
        /// The subscription's configuration.
        config: WireSubscriptionConfig,
    },
    /// Answer to `Receive` (possibly empty).
    Deliveries(Vec<WireDelivery>),
    /// Answer to operations that return nothing.
    Done,
    /// Answer to `DescribeTopic`.
    Topic(WireTopicInfo),
    /// Answer to `ListTopics`.
    Topics(Vec<WireTopicInfo>),
    /// Answer to `DescribeSubscription`.
    Subscription {
        /// Name.
        name: String,
        /// Configuration.
        config: WireSubscriptionConfig,
    },
    /// Answer to `Stats`.
    Stats(WireStats),
    /// Answer to `DlqList`: the messages with their envelope headers.
    DeadLettered(Vec<WireMessage>),
    /// Answer to `DlqRedrive`.
    Redriven {
        /// Ids moved (or that would be, on a dry run).
        moved: Vec<String>,
        /// Whether it was a dry run.
        dry_run: bool,
    },
    /// Answer to `DlqPurge`: how many were removed.
    Purged(u64),
    /// Answer to `SettleBatch`: one result per item, in order.
    Settled(Vec<Result<(), WireError>>),
    /// Answer to `JobLoad`: the live entry, if any.
    JobEntry(Option<WireVersioned>),
    /// Answer to `JobSwap`: the new version, or none when the entry changed since it was read.
    Swapped(Option<u64>),
    /// Answer to `JobRemove`: whether it removed the entry.
    Removed(bool),
    /// Answer to `JobScan`: the entries, the most recently written first.
    JobEntries(Vec<WireJobEntry>),
    /// Answer to `LimitTake`.
    Granted {
        /// Tokens granted (`0..=want`).
        granted: u32,
        /// When none was: how long until one is, in milliseconds.
        retry_after_ms: u64,
    },
    /// Answer to `SlotsTake`: the slots taken.
    Slots(u32),
    /// Answer to `FlagList`: keys and values, in key order.
    Flags(Vec<(String, String)>),
}

/// A job store document and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVersioned {
    /// The document (JSON).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Its version.
    pub version: u64,
}

/// One entry of a `JobScan` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireJobEntry {
    /// The key.
    pub key: String,
    /// The document (JSON).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Its version.
    pub version: u64,
}

/// One confirmed publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// Message id.
    pub id: String,
    /// False when the dedup window dropped it as a duplicate.
    pub fresh: bool,
}

/// A message on the wire (all headers, reserved ones included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMessage {
    /// Id.
    pub id: String,
    /// Event type.
    pub message_type: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Ordering key.
    pub ordering_key: Option<String>,
    /// Headers, sorted by name.
    pub headers: Vec<(String, String)>,
    /// Content type.
    pub content_type: Option<String>,
    /// Payload. Encoded as postcard encodes any byte sequence (varint length, then the
    /// bytes); `serde_bytes` only makes that one copy instead of a call per byte.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Publish time, ns since the Unix epoch.
    pub published_at_ns: Option<u64>,
    /// Earliest delivery time, ns since the Unix epoch.
    pub deliver_at_ns: Option<u64>,
}

/// A delivery on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireDelivery {
    /// Handle for the verbs, valid on this connection only.
    pub token: u64,
    /// The message.
    pub message: WireMessage,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Lease left when the server sent it, in milliseconds.
    pub lease_ms: u64,
    /// The topic it was published to.
    pub topic: String,
}

/// `TopicConfig` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireTopicConfig {
    /// Dedup window, ms.
    pub dedup_window_ms: Option<u64>,
    /// Backlog bound.
    pub backlog_bound: Option<WireBacklogBound>,
    /// Per-key ordering asked for.
    pub ordered: bool,
}

/// `BacklogBound` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireBacklogBound {
    /// Most messages.
    pub max_messages: Option<u64>,
    /// Most bytes.
    pub max_bytes: Option<u64>,
    /// `None`: reject; `Some(ms)`: block up to that long.
    pub block_ms: Option<u64>,
}

/// `SubscriptionConfig` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSubscriptionConfig {
    /// Topic.
    pub topic: String,
    /// Filter pattern.
    pub filter: Option<String>,
    /// Start position.
    pub start: WireStart,
    /// Lease, ms.
    pub lease_ms: u64,
    /// Max attempts.
    pub max_attempts: u32,
    /// Dead-letter queue on.
    pub dead_letter_queue: bool,
    /// Prefetch.
    pub prefetch: u32,
}

/// `StartPosition` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireStart {
    /// Latest.
    Latest,
    /// Earliest.
    Earliest,
    /// At a time, ns since the Unix epoch.
    At(u64),
}

/// `TopicInfo` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireTopicInfo {
    /// Name.
    pub name: String,
    /// Configuration.
    pub config: WireTopicConfig,
    /// Its subscriptions.
    pub subscriptions: Vec<String>,
}

/// `SubscriptionStats` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireStats {
    /// Ready.
    pub ready: Option<u64>,
    /// In flight.
    pub in_flight: Option<u64>,
    /// Delayed.
    pub delayed: Option<u64>,
    /// Dead-lettered.
    pub dead_lettered: Option<u64>,
    /// Age of the oldest unsettled message, ms.
    pub oldest_age_ms: Option<u64>,
}

/// Kind of a named object in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireKind {
    /// Topic.
    Topic,
    /// Subscription.
    Subscription,
    /// Message.
    Message,
}

/// A failed operation: the contract's error, kind by kind, so the client rebuilds the same
/// `sluice_core::Error` a local backend would have returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireError {
    /// `Error::NotFound`.
    NotFound {
        /// Kind.
        kind: WireKind,
        /// Name.
        name: String,
    },
    /// `Error::Conflict`.
    Conflict {
        /// Kind.
        kind: WireKind,
        /// Name.
        name: String,
        /// What differs.
        difference: String,
    },
    /// `Error::LeaseLost`.
    LeaseLost {
        /// Message id.
        id: String,
    },
    /// `Error::BacklogFull`.
    BacklogFull {
        /// Topic.
        topic: String,
        /// Which bound.
        detail: String,
    },
    /// `MessageError::TooLarge`.
    TooLarge {
        /// Message id.
        id: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// `MessageError::DelayTooLong`.
    DelayTooLong {
        /// Requested, ms.
        requested_ms: u64,
        /// Limit, ms.
        max_ms: u64,
    },
    /// Invalid input (a name, a filter, a header): not retryable.
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// `Error::Unsupported`.
    Unsupported {
        /// What.
        message: String,
    },
    /// `Error::Closed`.
    Closed {
        /// What is closed.
        what: String,
    },
    /// `Error::Timeout`.
    Timeout {
        /// After, ms.
        after_ms: u64,
    },
    /// The hello's token is missing or wrong; the connection closes.
    Unauthorized {
        /// Why.
        message: String,
    },
    /// Anything else: `Error::Backend`.
    Backend {
        /// Message.
        message: String,
        /// Whether a retry may succeed.
        retryable: bool,
    },
    /// The request names a subscriber or delivery token this connection does not hold.
    UnknownHandle {
        /// Which.
        message: String,
    },
    /// `Error::Forbidden`: the connection's API token lacks the grant for this request.
    Forbidden {
        /// What was refused, and which grant would allow it.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    /// The payload's encoding is the plain byte sequence's: `serde_bytes` changed the speed,
    /// not the wire format.
    #[test]
    fn a_payload_encodes_exactly_as_a_plain_byte_sequence() {
        #[derive(serde::Serialize)]
        struct Plain {
            payload: Vec<u8>,
        }
        #[derive(serde::Serialize)]
        struct Fast {
            #[serde(with = "serde_bytes")]
            payload: Vec<u8>,
        }
        let payload: Vec<u8> = (0..=255).chain(0..=255).collect();
        assert_eq!(
            postcard::to_allocvec(&Plain {
                payload: payload.clone()
            })
            .unwrap(),
            postcard::to_allocvec(&Fast { payload }).unwrap()
        );
    }
}
