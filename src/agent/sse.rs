/*!
Server-sent events (the `text/event-stream` framing of a streamed chat completion).

OpenAI-compatible servers stream `data: {json}` lines, each event ended by a blank line,
and finish with `data: [DONE]`. [`Decoder`] turns lines into event data following the
WHATWG rules the servers rely on (comments, `event:`/`id:` fields ignored, multi-line
`data`, an optional space after the colon, CRLF endings); [`read_events`] drives it over
a blocking reader with a bound on the line length, so a broken server cannot fill the
memory with one endless line.
*/

use std::io::{self, BufRead, Read};
use std::ops::ControlFlow;

/// The longest line accepted. A chunk of a chat completion is well under a kilobyte.
const MAX_LINE: u64 = 1024 * 1024;

/// Assembles events from lines.
#[derive(Debug, Default)]
pub struct Decoder {
    data: String,
    has_data: bool,
}

impl Decoder {
    /// Feed one line (its `\n` or `\r\n` may be included). Returns the data of the event
    /// the line completes, if any.
    pub fn line(&mut self, line: &str) -> Option<String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return self.finish();
        }
        if line.starts_with(':') {
            return None; // a comment, often a keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        None
    }

    /// The data of an event that the stream's end cut off before its blank line. The
    /// spec drops it; servers that omit the last blank line still mean it.
    pub fn finish(&mut self) -> Option<String> {
        let has_data = std::mem::take(&mut self.has_data);
        let data = std::mem::take(&mut self.data);
        has_data.then_some(data)
    }
}

/// Read events from `reader` until it ends or `on_data` breaks, giving each event's
/// data to `on_data`. A line longer than [`MAX_LINE`] is an `InvalidData` error.
pub fn read_events(reader: impl Read, mut on_data: impl FnMut(String) -> ControlFlow<()>) -> io::Result<()> {
    let mut reader = io::BufReader::new(reader);
    let mut decoder = Decoder::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            if let Some(data) = decoder.finish() {
                let _ = on_data(data);
            }
            return Ok(());
        }
        if n as u64 == MAX_LINE && line.last() != Some(&b'\n') {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "an event-stream line is too long"));
        }
        if let Some(data) = decoder.line(&String::from_utf8_lossy(&line))
            && on_data(data).is_break()
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        read_events(text.as_bytes(), |d| {
            out.push(d);
            ControlFlow::Continue(())
        })
        .unwrap();
        out
    }

    #[test]
    fn openai_style_stream() {
        let text = "data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";
        assert_eq!(events(text), ["{\"a\":1}", "{\"a\":2}", "[DONE]"]);
    }

    #[test]
    fn comments_fields_crlf_and_multiline_data() {
        let text = ": keep-alive\r\n\r\nevent: message\r\nid: 7\r\ndata:one\r\ndata: two\r\n\r\nretry: 5\n\n";
        assert_eq!(events(text), ["one\ntwo"]);
    }

    #[test]
    fn an_event_cut_off_by_the_end_still_counts() {
        assert_eq!(events("data: x\n\ndata: [DONE]"), ["x", "[DONE]"]);
        assert!(events("").is_empty());
    }

    #[test]
    fn breaking_stops_reading() {
        let mut seen = 0;
        read_events("data: 1\n\ndata: 2\n\n".as_bytes(), |_| {
            seen += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn an_endless_line_is_an_error() {
        let long = vec![b'x'; MAX_LINE as usize + 10];
        let err = read_events(&long[..], |_| ControlFlow::Continue(())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
