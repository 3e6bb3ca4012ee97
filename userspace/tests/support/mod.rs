pub mod env;
pub mod pkt;
