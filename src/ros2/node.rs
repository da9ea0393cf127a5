//! [`Node`]: one DDS participant and one ROS 2 node per run, shared by the
//! ROS 2 source and sink; dropped with its last clone, which removes the
//! participant from the graph.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ros2_client::qos::{Durability, History, Reliability, WhenFull};
use ros2_client::{Context, ContextOptions, MessageTypeName, Name, NodeName, NodeOptions, Publisher, QosProfile, Subscription};

use super::msg::RosMessage;
use super::{NodeNames, Ros2Error};

/// How to create a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Name, namespace and remapping rules.
    pub names: NodeNames,
    /// Image topics reliable instead of best effort (both ways).
    pub reliable: bool,
    /// DDS domain ([`super::domain_id_from_env`]).
    pub domain_id: u16,
}

impl NodeConfig {
    /// Node `/causeseg`, best-effort images, domain from `ROS_DOMAIN_ID`.
    pub fn from_env() -> Result<Self, Ros2Error> {
        Ok(NodeConfig { names: NodeNames::new("causeseg", "/", &[])?, reliable: false, domain_id: super::domain_id_from_env()? })
    }
}

/// A ROS 2 node on its own DDS participant; clones share it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    names: NodeNames,
    reliable: bool,
    stop: Arc<AtomicBool>,
    node: Mutex<ros2_client::Node>,
    /// Dropped after `node` (fields drop in order): the node's own writers
    /// go while the participant still runs, then the participant, which
    /// tells its peers it is leaving.
    _context: Context,
}

impl Node {
    /// Joins the DDS domain as `config` says. Sources of this node end
    /// (`next_frame` gives `None`) once `stop` is set: pass the stream's
    /// stop flag.
    pub fn new(config: &NodeConfig, stop: Arc<AtomicBool>) -> Result<Self, Ros2Error> {
        let error = |what: String, e: &dyn std::fmt::Display| Ros2Error::Create { what, reason: e.to_string() };
        let context = Context::with_options(ContextOptions::new().domain_id(config.domain_id))
            .map_err(|e| error(format!("a DDS participant in domain {}", config.domain_id), &e))?;
        let names = &config.names;
        let node_name = NodeName::new(names.namespace(), names.name()).map_err(|e| error(format!("node {}", names.fully_qualified()), &e))?;
        let options = NodeOptions::new().enable_rosout(false).start_parameter_services(false);
        let node = context.new_node(node_name, options).map_err(|e| error(format!("node {}", names.fully_qualified()), &e))?;
        log::info!("ROS 2 node {} in DDS domain {}", names.fully_qualified(), config.domain_id);
        let inner = Inner { names: names.clone(), reliable: config.reliable, stop, node: Mutex::new(node), _context: context };
        Ok(Node { inner: Arc::new(inner) })
    }

    /// The node's names and remapping rules.
    pub fn names(&self) -> &NodeNames {
        &self.inner.names
    }

    /// Whether the run is stopping.
    pub fn stopped(&self) -> bool {
        self.inner.stop.load(Ordering::Relaxed)
    }

    /// QoS of image topics: sensor data (best effort, volatile, keep last
    /// 1), or reliable with `--ros2-reliable`.
    pub fn image_qos(&self) -> QosProfile {
        let qos = QosProfile::subscription_default();
        if self.inner.reliable {
            qos.reliability(Reliability::Reliable { when_full: WhenFull::Wait(Duration::from_millis(100)) })
        } else {
            qos
        }
    }

    /// QoS of data published once for late subscribers too (reliable,
    /// transient local, keep last 1).
    pub fn latched_qos() -> QosProfile {
        QosProfile::publisher_default().durability(Durability::TransientLocal)
    }

    /// The ROS 2 default QoS (reliable, volatile, keep last 10), as
    /// `/diagnostics` publishers use it.
    pub fn default_qos() -> QosProfile {
        QosProfile::publisher_default().history(History::KeepLast { depth: 10 })
    }

    /// A publisher of `M` on `topic` (resolved and remapped), and the
    /// resolved name.
    pub fn publisher<M: RosMessage>(&self, topic: &str, qos: &QosProfile) -> Result<(Publisher<M>, String), Ros2Error> {
        let resolved = self.inner.names.resolve(topic)?;
        let mut node = self.inner.node.lock().unwrap_or_else(|e| e.into_inner());
        let topic = create_topic::<M>(&node, &resolved, qos)?;
        let publisher = node.create_publisher(&topic, Some(qos.clone())).map_err(|e| create_error(&resolved, "publisher", e))?;
        Ok((publisher, resolved))
    }

    /// A subscription to `M` on `topic` (resolved and remapped), and the
    /// resolved name.
    pub fn subscription<M: RosMessage>(&self, topic: &str, qos: &QosProfile) -> Result<(Subscription<M>, String), Ros2Error> {
        let resolved = self.inner.names.resolve(topic)?;
        let mut node = self.inner.node.lock().unwrap_or_else(|e| e.into_inner());
        let topic = create_topic::<M>(&node, &resolved, qos)?;
        let subscription = node.create_subscription(&topic, Some(qos.clone())).map_err(|e| create_error(&resolved, "subscription", e))?;
        Ok((subscription, resolved))
    }
}

fn create_topic<M: RosMessage>(node: &ros2_client::Node, resolved: &str, qos: &QosProfile) -> Result<ros2_client::dds::rustdds::Topic, Ros2Error> {
    let name = Name::parse(resolved).map_err(|e| create_error(resolved, "topic", e))?;
    node.create_topic(&name, MessageTypeName::new(M::PACKAGE, M::NAME), qos)
        .map_err(|e| create_error(resolved, "topic", e))
}

fn create_error(topic: &str, what: &str, error: impl std::fmt::Display) -> Ros2Error {
    Ros2Error::Create { what: format!("{what} {topic}"), reason: error.to_string() }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.inner.names.fully_qualified()).field("reliable", &self.inner.reliable).finish()
    }
}
