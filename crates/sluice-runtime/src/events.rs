//! Typed events: several event types on one topic.
//!
//! An [`Event`] type names itself (`order.placed`); publishing one sets the message `type`
//! ([`event_message`], [`Producer::publish_event`](crate::Producer::publish_event)). A
//! [`Router`] is a [`Handler`] with one typed handler per type: it decodes the payload into
//! the type the message names and dispatches. A message whose type has no handler follows
//! the [`UnknownType`] policy: dead-lettered with the reason (the default), or acked and
//! skipped.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::{Message, MessageBuilder};

use crate::handler::{decode_json, Context, DecodeError, Handler, HandlerResult};

/// An event type: a serde type with a stable name, sent as the message `type`.
pub trait Event: Serialize + DeserializeOwned + Send + 'static {
    /// The type name on the wire (`order.placed`). Renaming it orphans messages in flight.
    const TYPE: &'static str;
}

/// A JSON message for an event, with its `type` set.
pub fn event_message<E: Event>(event: &E) -> Result<MessageBuilder, serde_json::Error> {
    Ok(Message::json_builder(serde_json::to_vec(event)?).message_type(E::TYPE))
}

/// What a [`Router`] does with a message whose type has no handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownType {
    /// Dead-letter with the reason `unknown message type` (the default): nothing is lost,
    /// and a redrive after deploying the handler processes it.
    #[default]
    DeadLetter,
    /// Ack and skip: for consumers that only care about some types of a shared topic.
    Ack,
}

type Erased = Box<dyn Any + Send>;

trait Route: Send + Sync {
    fn decode(&self, message: &Message) -> Result<Erased, DecodeError>;
    fn handle(&self, input: Erased, ctx: Context) -> BoxFuture<'static, HandlerResult>;
}

struct TypedRoute<E, F> {
    f: F,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E, F, Fut> Route for TypedRoute<E, F>
where
    E: Event,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn decode(&self, message: &Message) -> Result<Erased, DecodeError> {
        Ok(Box::new(decode_json::<E>(message)?))
    }
    fn handle(&self, input: Erased, ctx: Context) -> BoxFuture<'static, HandlerResult> {
        let event = *input.downcast::<E>().expect("a route decodes its own type");
        boxed((self.f)(event, ctx))
    }
}

/// A decoded message on its way to its route.
pub struct Routed {
    route: Arc<dyn Route>,
    input: Erased,
}

/// Dispatches messages to one typed handler per event type.
///
/// ```
/// use sluice_runtime::{Context, Event, Router, UnknownType};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order_id: u64 }
/// impl Event for OrderPlaced { const TYPE: &'static str = "order.placed"; }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderCancelled { order_id: u64 }
/// impl Event for OrderCancelled { const TYPE: &'static str = "order.cancelled"; }
///
/// let router = Router::new()
///     .on(|e: OrderPlaced, _ctx: Context| async move { println!("placed {}", e.order_id); Ok(()) })
///     .on(|e: OrderCancelled, _ctx: Context| async move { println!("cancelled {}", e.order_id); Ok(()) })
///     .unknown_type(UnknownType::DeadLetter);
/// ```
#[derive(Default, Clone)]
pub struct Router {
    routes: HashMap<&'static str, Arc<dyn Route>>,
    unknown: UnknownType,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("types", &self.types())
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl Router {
    /// A router without routes (every message is of an unknown type).
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes messages of type `E::TYPE` to `handler`. A second handler for the same type
    /// replaces the first.
    #[must_use]
    pub fn on<E, F, Fut>(mut self, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let route = TypedRoute {
            f: handler,
            _event: std::marker::PhantomData,
        };
        self.routes.insert(E::TYPE, Arc::new(route));
        self
    }

    /// Sets the policy for types without a handler.
    #[must_use]
    pub fn unknown_type(mut self, policy: UnknownType) -> Self {
        self.unknown = policy;
        self
    }

    /// The types routed, sorted.
    pub fn types(&self) -> Vec<&'static str> {
        let mut types: Vec<_> = self.routes.keys().copied().collect();
        types.sort_unstable();
        types
    }
}

impl Handler for Router {
    type Input = Routed;

    fn decode(&self, message: &Message) -> Result<Routed, DecodeError> {
        let route = message.message_type().and_then(|t| self.routes.get(t));
        let Some(route) = route else {
            let err = DecodeError::unknown_type(format!(
                "no handler for type {:?} (handled: {})",
                message.message_type().unwrap_or("<none>"),
                self.types().join(", ")
            ));
            return Err(match self.unknown {
                UnknownType::DeadLetter => err,
                UnknownType::Ack => err.ack_and_skip(),
            });
        };
        Ok(Routed {
            route: route.clone(),
            input: route.decode(message)?,
        })
    }

    fn handle(&self, routed: Routed, ctx: Context) -> impl Future<Output = HandlerResult> + Send {
        routed.route.handle(routed.input, ctx)
    }
}
