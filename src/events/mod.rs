//! Telling the outside world: the `Publisher` that delivers committed outbox events to
//! subscribers, and the `webhooks` worker that POSTs them, signed, with retries. The
//! `Event` type itself is plain data in `domain::event`.

pub mod publisher;
pub mod webhooks;

pub use publisher::Publisher;
