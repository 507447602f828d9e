//! End-to-end tests of the HTTP API and the store, each run on SQLite (embedded default) and on
//! PostgreSQL + Redis (distributed), through the real application.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod api_keys;
mod auth;
mod cli;
mod connections;
mod crash;
mod fleet;
mod full_disk;
mod hostile_input;
mod http_basics;
mod openapi;
mod poison;
mod real_worker;
mod repository;
mod send;
mod webhooks;
