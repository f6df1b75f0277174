//! What the API server said about a failed request, in its own words.
//!
//! kube renders a refused request as `ApiError: <message> (Status { status: Some(Failure), … })`:
//! the server's message followed by a debug dump of the whole response. That text would end up
//! in conditions and events, where a person reads it. [`describe`] keeps what the server said
//! (its message, reason and HTTP code), and [`is_refusal`] tells a request the server refused
//! as invalid from a failure worth retrying.

/// The API server's message, reason and HTTP code for a refused request, or the client's own
/// text when no answer came (a timeout, a closed connection).
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let message = status.message.trim();
            let message = if message.is_empty() {
                "no message"
            } else {
                message
            };
            if status.reason.is_empty() {
                format!("{message} (HTTP {})", status.code)
            } else {
                format!("{message} ({}, HTTP {})", status.reason, status.code)
            }
        }
        other => other.to_string(),
    }
}

/// Whether the API server refused the request as invalid (400 Bad Request, 422 Invalid): the
/// same request fails again until the object it carries changes. Everything else — a 5xx, a
/// timeout, a conflict, throttling, a permission an administrator may still grant — can
/// succeed on a retry.
pub fn is_refusal(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if matches!(status.code, 400 | 422))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn refused(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
    }

    #[test]
    fn a_refusal_is_told_in_the_servers_words_without_a_debug_dump() {
        let error = refused(
            422,
            "Invalid",
            "StatefulSet.apps \"cache\" is invalid: spec: Forbidden: updates to statefulset spec \
             for fields other than 'replicas' are forbidden",
        );
        let text = describe(&error);
        assert_eq!(
            text,
            "StatefulSet.apps \"cache\" is invalid: spec: Forbidden: updates to statefulset spec \
             for fields other than 'replicas' are forbidden (Invalid, HTTP 422)"
        );
        assert!(
            error.to_string().contains("Status {"),
            "kube's own text dumps the status"
        );
        assert!(!text.contains("Status {") && !text.contains("ListMeta"));
    }

    #[test]
    fn only_invalid_requests_are_refusals() {
        assert!(is_refusal(&refused(422, "Invalid", "bad")));
        assert!(is_refusal(&refused(400, "BadRequest", "bad")));
        for (code, reason) in [
            (500, "InternalError"),
            (409, "Conflict"),
            (429, "TooManyRequests"),
            (403, "Forbidden"),
            (404, "NotFound"),
            (504, "Timeout"),
        ] {
            assert!(!is_refusal(&refused(code, reason, "retry")), "{code}");
        }
        assert_eq!(describe(&refused(500, "", "  ")), "no message (HTTP 500)");
    }
}
