//! Tools around the gateway, not on the data path: `explain`, `demo`, `cert`
//! (and `token`, in `demo`).

pub mod cert;
pub mod demo;
pub mod explain;
