/*!
Shared network plumbing for platforms that talk HTTP (and, later, WebSockets).

Every HTTP platform needs the same few things done the same way: a ureq `Agent` whose
blocking calls all have a deadline, the status code in hand instead of an error (so a 429
body with its `retry_after` can be read), and one answer to "is this failure worth
retrying?". They live here so each platform file holds only its own protocol.
*/

pub mod http;
