//! Customer webhooks: signed (Standard Webhooks), durable deliveries of the gateway's events to
//! the endpoints customers register, guarded against server-side request forgery.

pub mod endpoints;
pub mod signing;
pub mod ssrf;

pub use endpoints::Endpoints;
pub use signing::SigningSecret;
