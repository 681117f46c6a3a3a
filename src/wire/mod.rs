//! HTTP vocabulary shared by every layer that speaks HTTP: the response body type, the hop-by-hop
//! header table and Kubernetes `Status` bodies.

pub mod body;
pub mod client_body;
pub mod headers;
pub mod received;
pub mod replay;
pub mod status;
