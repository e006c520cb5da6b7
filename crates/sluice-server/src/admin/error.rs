//! Every refusal of the HTTP API: a JSON body `{"error": "…", "code": "…"}` whose `code` is
//! stable (clients branch on it; the message is for people) and a status that says the same.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_core::{Error, MessageError};

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    /// An error whose code follows from its status.
    pub(crate) fn new(status: StatusCode, message: String) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "invalid",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "invalid",
            _ => "internal",
        };
        Self::coded(status, code, message)
    }

    /// An error with its own code.
    pub(crate) fn coded(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A request body that is not what the route takes.
    pub(crate) fn bad_body(message: impl Into<String>) -> Self {
        Self::coded(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    /// The same error with `context: ` before its message.
    pub(crate) fn context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// The status and stable code of a contract error.
pub(crate) fn classify(error: &Error) -> (StatusCode, &'static str) {
    match error {
        Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        Error::LeaseLost { .. } => (StatusCode::GONE, "lease_lost"),
        Error::BacklogFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "backlog_full"),
        Error::Message(MessageError::TooLarge { .. }) => {
            (StatusCode::PAYLOAD_TOO_LARGE, "message_too_large")
        }
        Error::Message(MessageError::DelayTooLong { .. }) => {
            (StatusCode::BAD_REQUEST, "delay_too_long")
        }
        Error::Name(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
        Error::Message(_) => (StatusCode::BAD_REQUEST, "invalid_message"),
        Error::InvalidFilter { .. } => (StatusCode::BAD_REQUEST, "invalid_filter"),
        Error::Url(_) => (StatusCode::BAD_REQUEST, "invalid"),
        Error::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
        Error::Closed(_) => (StatusCode::SERVICE_UNAVAILABLE, "closed"),
        Error::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        e if e.is_retryable() => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, code) = classify(&error);
        Self::coded(status, code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message, "code": self.code })),
        )
            .into_response()
    }
}
