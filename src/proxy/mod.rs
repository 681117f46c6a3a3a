//! Request handling on the listener: routing, kubectl's filter, static files, forwarding to the API
//! server and upgrade tunnels, with the errors they answer.

pub mod error;
pub mod filter;
pub mod forward;
pub mod guard;
pub mod router;
pub mod static_files;
pub mod upgrade;
