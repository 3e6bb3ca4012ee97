pub mod datapath;
pub mod model;
