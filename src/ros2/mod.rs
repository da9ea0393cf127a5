//! ROS 2 without a ROS installation (feature `ros2`): `causeseg run` as a
//! perception node, through `ros2-client` and its pure-Rust DDS (RustDDS).
//! Any ROS 2 system on the same DDS domain (`ROS_DOMAIN_ID`) sees one node,
//! `/causeseg` by default:
//!
//! | topic | type | QoS | what |
//! | --- | --- | --- | --- |
//! | `~/labels` | `sensor_msgs/msg/Image` | sensor data¹ | `mono8` (`mono16` beyond 256 concepts), pixel = concept id, input resolution |
//! | `~/color` | `sensor_msgs/msg/Image` | sensor data¹ | `rgb8`, concept colours |
//! | `~/overlay` | `sensor_msgs/msg/Image` | sensor data¹ | `rgb8`, colours over the input (`--ros2-overlay`) |
//! | `~/label_info` | `vision_msgs/msg/LabelInfo` | reliable, transient local, depth 1 | concept id → name, once |
//! | `~/concepts` | `std_msgs/msg/String` | reliable, transient local, depth 1 | `[{"id","name","color"}]` JSON, once |
//! | `/diagnostics` | `diagnostic_msgs/msg/DiagnosticArray` | reliable, depth 10 | per frame: FPS, per-stage latency |
//! | (source) `ros2:///TOPIC` | `sensor_msgs/msg/Image` or `CompressedImage` | sensor data¹ | the input |
//!
//! ¹ best effort, volatile, keep last 1; `--ros2-reliable` makes the image
//! topics reliable.
//!
//! Every published image carries the input frame's header: the camera
//! message's stamp and frame id when the source is ROS 2, else the capture
//! time and `--frame-id`.
//!
//! [`msg`] holds the message types, [`names`] name resolution and
//! remapping, `Node` (feature `ros2`) the DDS participant and node shared
//! by the source (`source::ros2`) and the sink (`sink::ros2`).

pub mod msg;
pub mod names;
#[cfg(feature = "ros2")]
mod node;

#[cfg(feature = "ros2")]
pub use node::{Node, NodeConfig};
/// The publisher and subscription types [`Node`] hands out (ros2-client's).
#[cfg(feature = "ros2")]
pub use ros2_client::{Publisher, Subscription};
pub use names::{NodeNames, Remap};

/// Errors of the ROS 2 node; each names the flag, name or topic concerned.
#[derive(Debug, thiserror::Error)]
pub enum Ros2Error {
    /// A node name, namespace or topic name that ROS 2 does not allow.
    #[error("{what} '{name}': {reason}")]
    Name {
        /// The name.
        name: String,
        /// "node name", "namespace" or "topic name".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A malformed `--remap` rule.
    #[error("--remap '{rule}': {reason}")]
    Remap {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `ROS_DOMAIN_ID` is not a domain id.
    #[error("ROS_DOMAIN_ID='{0}': not a DDS domain id (0 to 232)")]
    DomainId(String),
    /// The DDS participant, node, topic, publisher or subscription could
    /// not be created.
    #[error("ROS 2: cannot create {what}: {reason}")]
    Create {
        /// What was created.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// The DDS domain from `ROS_DOMAIN_ID` (0 when unset or empty), as ROS 2 reads it.
pub fn domain_id_from_env() -> Result<u16, Ros2Error> {
    match std::env::var("ROS_DOMAIN_ID") {
        Ok(text) => parse_domain_id(&text),
        Err(_) => Ok(0),
    }
}

/// Parses a domain id: 0 to 232 (the highest whose UDP ports fit), blank = 0.
fn parse_domain_id(text: &str) -> Result<u16, Ros2Error> {
    if text.trim().is_empty() {
        return Ok(0);
    }
    match text.trim().parse::<u16>() {
        Ok(id) if id <= 232 => Ok(id),
        _ => Err(Ros2Error::DomainId(text.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_ids_are_checked() {
        assert_eq!(parse_domain_id("").unwrap(), 0);
        assert_eq!(parse_domain_id(" 42 ").unwrap(), 42);
        assert_eq!(parse_domain_id("233").unwrap_err().to_string(), "ROS_DOMAIN_ID='233': not a DDS domain id (0 to 232)");
        assert!(parse_domain_id("x").is_err());
    }
}
