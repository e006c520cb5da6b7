//! `/api/v1/jobs` and `/api/v1/schedules`: the background jobs and recurring schedules of the
//! job store the applications' `Jobs` share, read and cancelled with `sluice-runtime`'s
//! [`JobRecords`], the same rules the applications follow. That store is the one given with
//! [`ServerConfig::job_store`](crate::ServerConfig::job_store) (`--job-store`: applications
//! that keep theirs in PostgreSQL, SQLite or Redis), else the engine's own, which `Jobs` over
//! `sluice://` uses by default, in the namespace `?namespace=` names (none: the default).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_core::{Backend, Error};
use sluice_runtime::jobs::{JobRecords, JobState, JobStatus, ScheduleRecord};

use super::{ApiError, ApiResult, View};
use crate::Shared;

/// The most jobs or schedules one answer lists.
const MAX_LIMIT: usize = 1000;

fn records(shared: &Shared, view: &View) -> Result<JobRecords, ApiError> {
    if let Some(store) = &shared.config.job_store {
        return Ok(JobRecords::new(Arc::clone(&store.0)));
    }
    let store = view.backend(shared)?.job_store().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no job store: start it with `sluice serve --job-store URL`".into(),
        )
    })?;
    Ok(JobRecords::new(store))
}

/// A job store failure, with the status `From<Error>` gives it and what was being done.
fn failed(what: &str, error: Error) -> ApiError {
    ApiError::from(error).context(&format!("{what}: the job store failed"))
}

/// `GET /api/v1/jobs?job=&state=&limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    job: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

/// The most recently changed jobs, newest first.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ListQuery>,
    Query(view): Query<View>,
) -> ApiResult<Vec<JobStatus>> {
    let records = records(&shared, &view)?;
    let limit = query.limit.unwrap_or(100).min(MAX_LIMIT);
    let job = query.job.as_deref().filter(|j| !j.is_empty());
    let jobs = match query.state.as_deref().filter(|s| !s.is_empty()) {
        Some(state) if !JobState::NAMES.contains(&state) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "state must be one of {}, not `{state}`",
                    JobState::NAMES.join(", ")
                ),
            ))
        }
        Some(state) => records.list_in_state(job, state, limit).await,
        None => records.list(job, limit).await,
    };
    Ok(Json(jobs.map_err(|e| failed("listing jobs", e))?))
}

/// One job's status.
pub(crate) async fn status(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(view): Query<View>,
) -> ApiResult<JobStatus> {
    let records = records(&shared, &view)?;
    match records
        .status(&id)
        .await
        .map_err(|e| failed("reading a job", e))?
    {
        Some(status) => Ok(Json(status)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the job store knows no job `{id}` (never enqueued with it, or forgotten after 7 days)"),
        )),
    }
}

/// What a cancel did.
#[derive(Debug, Serialize)]
pub(crate) struct CancelAnswer {
    id: String,
    /// Whether the job was still pending (it will not run).
    cancelled: bool,
    /// Its state now (`unknown` if the store knows no such job).
    state: String,
}

/// Cancels a job that has not started. 200 either way; `cancelled` says whether it was
/// pending. 404 if the store knows no such job.
pub(crate) async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(view): Query<View>,
) -> ApiResult<CancelAnswer> {
    let records = records(&shared, &view)?;
    let outcome = records
        .cancel(&id)
        .await
        .map_err(|e| failed("cancelling a job", e))?;
    let Some(status) = outcome.status() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the job store knows no job `{id}`"),
        ));
    };
    let state = status.state.name().to_owned();
    if outcome.was_pending() {
        tracing::info!(job = %id, "job cancelled from the admin API");
    }
    Ok(Json(CancelAnswer {
        cancelled: outcome.was_pending(),
        id,
        state,
    }))
}

/// `GET /api/v1/schedules?limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct SchedulesQuery {
    limit: Option<usize>,
}

/// Every schedule described in the store, by id, with its next due tick and last runs.
pub(crate) async fn schedules(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<SchedulesQuery>,
    Query(view): Query<View>,
) -> ApiResult<Vec<ScheduleRecord>> {
    let records = records(&shared, &view)?;
    let limit = query.limit.unwrap_or(100).min(MAX_LIMIT);
    Ok(Json(
        records
            .schedules(limit)
            .await
            .map_err(|e| failed("listing schedules", e))?,
    ))
}
