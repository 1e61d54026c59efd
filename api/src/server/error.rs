//! The error answer of every route, `{"error": {"code", "message"}}` with the status its
//! code carries, and the reading and parsing of request bodies into Aspen errors.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::{ApiError, ErrorCode, ValidationError};
use crate::json::ErrorBody;

/// An error answer: the JSON body, sent with the HTTP status of its code. The body is
/// boxed so that results carrying it stay small on the success path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError(Box<ErrorBody>);

impl HttpError {
    /// A plain error answer: `{"error": {"code", "message"}}`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError(Box::new(ErrorBody::new(code, message)))
    }

    /// The JSON body.
    pub fn body(&self) -> &ErrorBody {
        &self.0
    }
}

impl From<ErrorBody> for HttpError {
    fn from(body: ErrorBody) -> Self {
        HttpError(Box::new(body))
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError::new(e.code, e.message)
    }
}

impl From<ValidationError> for HttpError {
    fn from(e: ValidationError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(*self.0)).into_response()
    }
}

/// What a handler returns: a response, or an error answer.
pub type HttpResult = Result<Response, HttpError>;

/// Parses a JSON body into `T`; on failure a 400 `bad_request` naming the problem.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body)
        .map_err(|e| HttpError::from(ApiError::bad_request(format!("malformed JSON body: {e}"))))
}

/// The body's bytes, or a 413 `too_large` when it broke the route's body limit, or a 400
/// `bad_request` when it could not be read.
pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, HttpError> {
    body.map_err(|rejection| {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::TooLarge
        } else {
            ErrorCode::BadRequest
        };
        let message = match code {
            ErrorCode::TooLarge => {
                format!("request body is larger than the limit for this endpoint: {rejection}")
            }
            _ => format!("could not read the request body: {rejection}"),
        };
        HttpError::new(code, message)
    })
}
