//! Log lines that carry the request id.
//!
//! Every request is served inside a task-local scope holding its id, and the event formats of
//! this module append that id to every line logged on the request's behalf, from the daemon or
//! from cloudx-core. A tracing span per request would do the same, but creating and formatting
//! one costs about as much as the rest of the middleware together; the task-local costs nothing
//! until a line is actually written.

use std::fmt;
use std::future::Future;

use axum::http::HeaderValue;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    static REQUEST_ID: HeaderValue;
}

/// Runs `future` as the work of the request `id`: lines it logs carry the id.
pub(crate) fn scope<F: Future>(id: HeaderValue, future: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(id, future)
}

/// The id of the request being served by the current task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.to_str().ok().map(str::to_owned)).ok().flatten()
}

/// How lines are laid out.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Text,
    Json,
}

/// A tracing-subscriber event format that appends `request_id` to the lines of a request.
///
/// Outside a request it is exactly the wrapped format.
#[derive(Debug)]
pub struct WithRequestId<F> {
    plain: F,
    colored: F,
    shape: Shape,
}

/// Human-readable lines (`... message key=value request_id=...`), coloured on a terminal.
pub fn text() -> WithRequestId<Format<Full>> {
    WithRequestId { plain: Format::default(), colored: Format::default().with_ansi(true), shape: Shape::Text }
}

/// One JSON object a line, event fields at the top level, with a `request_id` member.
pub fn json() -> WithRequestId<Format<Json>> {
    let format = Format::default().json().flatten_event(true).with_current_span(true);
    WithRequestId { plain: format.clone(), colored: format, shape: Shape::Json }
}

impl<S, N, F> FormatEvent<S, N> for WithRequestId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Ok(id) = REQUEST_ID.try_with(HeaderValue::clone) else {
            return self.plain.format_event(ctx, writer, event);
        };
        // Ids are checked at the edge: short, and made of [A-Za-z0-9-_.:] only, so they need no
        // escaping in either shape.
        let id = id.to_str().unwrap_or("-");
        let inner = if writer.has_ansi_escapes() { &self.colored } else { &self.plain };
        let mut line = String::with_capacity(256);
        inner.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        match self.shape {
            Shape::Text => writeln!(writer, "{line} request_id={id}"),
            Shape::Json => match line.strip_prefix('{') {
                Some(rest) if rest.starts_with('}') => writeln!(writer, "{{\"request_id\":\"{id}\"{rest}"),
                Some(rest) => writeln!(writer, "{{\"request_id\":\"{id}\",{rest}"),
                None => writeln!(writer, "{line}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_owned).collect()
        }
    }

    async fn log_in_and_out_of_a_request() {
        tracing::info!(answer = 42, "outside");
        scope(HeaderValue::from_static("req-1"), async {
            tracing::info!(answer = 42, "inside");
            assert_eq!(current_request_id().as_deref(), Some("req-1"));
        })
        .await;
        assert_eq!(current_request_id(), None);
    }

    #[tokio::test]
    async fn text_lines_of_a_request_end_with_its_id() {
        let out = Captured::default();
        let subscriber =
            tracing_subscriber::fmt().with_writer(out.clone()).with_ansi(false).event_format(text()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        log_in_and_out_of_a_request().await;
        let lines = out.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].ends_with("outside answer=42"), "{}", lines[0]);
        assert!(lines[1].ends_with("inside answer=42 request_id=req-1"), "{}", lines[1]);
    }

    #[tokio::test]
    async fn json_lines_of_a_request_have_a_request_id_member() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt().with_writer(out.clone()).json().event_format(json()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        log_in_and_out_of_a_request().await;
        let lines: Vec<serde_json::Value> = out.lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"], "outside");
        assert!(lines[0].get("request_id").is_none());
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["answer"], 42);
        assert_eq!(lines[1]["request_id"], "req-1");
    }
}
