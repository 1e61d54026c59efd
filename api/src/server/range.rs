//! `Range` requests on `GET /v1/kv/{key}?raw` (RFC 9110, section 14): one byte range of
//! the value, answered 206 with `Content-Range`, or 416 when it starts past the end. A
//! header that is not one well-formed byte range is ignored and the whole value is sent,
//! as the RFC allows; so is a request for several ranges.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ErrorCode;
use crate::json::ErrorBody;

/// What to send of a value of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wanted {
    /// All of it (200).
    Whole,
    /// `len` bytes from `start` (206).
    Part { start: u64, len: u64 },
    /// Nothing: the range starts at or past the end (416).
    Unsatisfiable,
}

impl Wanted {
    /// The range `headers` ask for, of a value of `size` bytes.
    pub(super) fn of(headers: &HeaderMap, size: u64) -> Wanted {
        let Some(spec) = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("bytes="))
        else {
            return Wanted::Whole;
        };
        if spec.contains(',') {
            return Wanted::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Wanted::Whole;
        };
        let number = |s: &str| -> Option<u64> {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        match (number(first), number(last), last.trim().is_empty()) {
            // `bytes=-N`: the last N bytes.
            (None, Some(suffix), _) if first.trim().is_empty() => {
                if suffix == 0 || size == 0 {
                    return Wanted::Unsatisfiable;
                }
                let len = suffix.min(size);
                Wanted::Part {
                    start: size - len,
                    len,
                }
            }
            (Some(start), None, true) if start < size => Wanted::Part {
                start,
                len: size - start,
            },
            (Some(start), Some(end), _) if start <= end => {
                if start >= size {
                    return Wanted::Unsatisfiable;
                }
                Wanted::Part {
                    start,
                    len: end.min(size - 1) - start + 1,
                }
            }
            (Some(start), None, true) if start >= size => Wanted::Unsatisfiable,
            _ => Wanted::Whole,
        }
    }

    /// The byte range to read: `(start, len)`.
    pub(super) fn span(self, size: u64) -> (u64, u64) {
        match self {
            Wanted::Whole => (0, size),
            Wanted::Part { start, len } => (start, len),
            Wanted::Unsatisfiable => (0, 0),
        }
    }

    /// The status and headers of an answer with this range's bytes of a `size`-byte value.
    pub(super) fn head(self, size: u64) -> (StatusCode, HeaderMap) {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let (status, len) = match self {
            Wanted::Whole => (StatusCode::OK, size),
            Wanted::Part { start, len } => {
                let range = format!("bytes {start}-{}/{size}", start + len - 1);
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&range).expect("ASCII"),
                );
                (StatusCode::PARTIAL_CONTENT, len)
            }
            Wanted::Unsatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, 0),
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        (status, headers)
    }
}

/// The 416 answer: the JSON error body and `Content-Range: bytes */size`.
pub(super) fn unsatisfiable(key: &str, size: u64) -> Response {
    let body = ErrorBody::new(
        ErrorCode::BadRequest,
        format!(
            "the range asked for starts past the end of the value of {key:?}, which has \
             {size} bytes: ask for bytes 0 to {}",
            size.saturating_sub(1)
        ),
    );
    let mut response = (StatusCode::RANGE_NOT_SATISFIABLE, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(range: &str, size: u64) -> Wanted {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
        Wanted::of(&headers, size)
    }

    #[test]
    fn byte_ranges_are_read_as_the_rfc_says() {
        let part = |start, len| Wanted::Part { start, len };
        assert_eq!(Wanted::of(&HeaderMap::new(), 10), Wanted::Whole);
        assert_eq!(wanted("bytes=0-0", 10), part(0, 1));
        assert_eq!(wanted("bytes=2-5", 10), part(2, 4));
        assert_eq!(wanted("bytes=2-", 10), part(2, 8));
        assert_eq!(wanted("bytes=9-", 10), part(9, 1));
        assert_eq!(wanted("bytes=-3", 10), part(7, 3));
        assert_eq!(wanted("bytes=-30", 10), part(0, 10));
        // The last position is cut to the value's end.
        assert_eq!(wanted("bytes=8-100", 10), part(8, 2));
    }

    #[test]
    fn a_range_past_the_end_is_unsatisfiable_and_a_bad_one_is_ignored() {
        assert_eq!(wanted("bytes=10-", 10), Wanted::Unsatisfiable);
        assert_eq!(wanted("bytes=10-12", 10), Wanted::Unsatisfiable);
        assert_eq!(wanted("bytes=-0", 10), Wanted::Unsatisfiable);
        assert_eq!(wanted("bytes=0-", 0), Wanted::Unsatisfiable);
        for ignored in [
            "bytes=5-2",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=",
            "bytes=1",
        ] {
            assert_eq!(wanted(ignored, 10), Wanted::Whole, "{ignored}");
        }
    }

    #[test]
    fn a_part_says_where_it_is_in_the_value() {
        let (status, headers) = Wanted::Part { start: 2, len: 4 }.head(10);
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(headers[header::CONTENT_RANGE], "bytes 2-5/10");
        assert_eq!(headers[header::CONTENT_LENGTH], "4");
        let (status, headers) = Wanted::Whole.head(10);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_LENGTH], "10");
        assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    }
}
