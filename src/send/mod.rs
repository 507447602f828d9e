//! The send path's domain: what a customer may ask to send, validated once at the edge and turned
//! into the exact body the worker's `POST /api/{sessionId}/send` accepts.

pub mod ingress;
pub mod request;

pub use ingress::{AcceptedMessage, Ingress, MessageIds};
pub use request::{MessageKind, SendRequest, ValidatedSend};
