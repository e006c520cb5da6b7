//! The HTTP admin API, Prometheus `/metrics` and the dashboard.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let _ = (listener, shared);
    stop.cancelled().await;
}
