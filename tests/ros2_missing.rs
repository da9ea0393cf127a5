//! A build without the `ros2` feature says how to get it (tests/ros2.rs
//! covers the feature itself).

#![cfg(not(feature = "ros2"))]

mod common;

use common::{assert_clean_error, causeseg};

#[test]
fn ros2_without_the_feature_is_a_clear_error() {
    assert_clean_error(&causeseg(&["run", "--ros2"]), "--ros2: this build has no ros2 support (rebuild with `cargo build --release --features ros2`)");
    assert_clean_error(
        &causeseg(&["run", "--source", "ros2:///camera/image_raw"]),
        "ros2:///camera/image_raw: this build has no ros2 support (rebuild with `cargo build --release --features ros2`)",
    );
}
