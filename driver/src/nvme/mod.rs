//! NVMe wire types (being written).
