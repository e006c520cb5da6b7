//! [`RemoteLimiter`]: global rate limits' tokens from `sluice serve`'s limiter (`LimitTake`),
//! so workers in every process connected to one server share one bucket per limit.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::limit::{Grant, LimiterStore, Rate, SlotsRequest};
use sluice_core::Result;
use sluice_protocol::{Request, Response};

use crate::link::{unexpected, Link};

/// The server's limiter (see the module docs).
#[derive(Clone)]
pub struct RemoteLimiter {
    link: Arc<Link>,
}

impl std::fmt::Debug for RemoteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLimiter")
            .field("addr", &self.link.addr())
            .finish()
    }
}

impl RemoteLimiter {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self { link }
    }
}

impl LimiterStore for RemoteLimiter {
    fn take<'a>(
        &'a self,
        name: &'a str,
        rate: Rate,
        give_back: u32,
        want: u32,
    ) -> BoxFuture<'a, Result<Grant>> {
        boxed(async move {
            let request = Request::LimitTake {
                name: name.to_owned(),
                per_second: rate.per_second,
                burst: rate.burst,
                give_back,
                want,
            };
            match self.link.call(request).await? {
                Response::Granted {
                    granted,
                    retry_after_ms,
                } => Ok(Grant {
                    granted,
                    retry_after: Duration::from_millis(retry_after_ms),
                }),
                other => Err(unexpected(other)),
            }
        })
    }

    fn slots<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        request: SlotsRequest,
    ) -> BoxFuture<'a, Result<u32>> {
        boxed(async move {
            let request = Request::SlotsTake {
                name: name.to_owned(),
                holder: holder.to_owned(),
                max: request.max,
                hold: request.hold,
                want: request.want,
                ttl_ms: u64::try_from(request.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            };
            match self.link.call(request).await? {
                Response::Slots(taken) => Ok(taken),
                other => Err(unexpected(other)),
            }
        })
    }

    fn set_flag<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a str>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(async move {
            let request = Request::FlagSet {
                key: key.to_owned(),
                value: value.map(str::to_owned),
                ttl_ms: ttl.map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)),
            };
            match self.link.call(request).await? {
                Response::Done => Ok(()),
                other => Err(unexpected(other)),
            }
        })
    }

    fn flags<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        boxed(async move {
            let request = Request::FlagList {
                prefix: prefix.to_owned(),
            };
            match self.link.call(request).await? {
                Response::Flags(found) => Ok(found),
                other => Err(unexpected(other)),
            }
        })
    }
}
