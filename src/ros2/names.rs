//! ROS 2 names: the node's name and namespace, topic names resolved against
//! them (`~/labels` → `/NAMESPACE/NODE/labels`, `labels` →
//! `/NAMESPACE/labels`, `/diagnostics` as is), and remapping rules
//! `FROM:=TO` as `ros2 run … --ros-args -r FROM:=TO` takes them (both sides
//! resolved before matching; `__node:=NAME` and `__ns:=/NAMESPACE` rename the
//! node and move it).

use std::fmt;

use super::Ros2Error;

/// One remapping rule, `FROM:=TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remap {
    /// The name as the node uses it (`~/labels`, `image`, `/camera/image_raw`, `__node`, `__ns`).
    pub from: String,
    /// What it becomes.
    pub to: String,
}

impl Remap {
    /// Parses `FROM:=TO`.
    pub fn parse(text: &str) -> Result<Self, Ros2Error> {
        let bad = |reason: &str| Ros2Error::Remap { rule: text.into(), reason: reason.into() };
        let (from, to) = text.split_once(":=").ok_or_else(|| bad("expected FROM:=TO"))?;
        if from.is_empty() || to.is_empty() {
            return Err(bad("expected FROM:=TO"));
        }
        Ok(Remap { from: from.into(), to: to.into() })
    }
}

impl fmt::Display for Remap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:={}", self.from, self.to)
    }
}

/// A node's name, namespace and remapping rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNames {
    name: String,
    namespace: String,
    /// Topic rules, both sides resolved.
    remaps: Vec<(String, String)>,
}

impl NodeNames {
    /// The node `name` in `namespace` (`/`, `/robot1`; a relative `robot1`
    /// is taken from the root), with `remaps` (`__node` and `__ns` rules
    /// override `name` and `namespace`).
    pub fn new(name: &str, namespace: &str, remaps: &[Remap]) -> Result<Self, Ros2Error> {
        let mut name = name.to_string();
        let mut namespace = namespace.to_string();
        for remap in remaps {
            match remap.from.as_str() {
                "__node" | "__name" => name = remap.to.clone(),
                "__ns" => namespace = remap.to.clone(),
                _ => {}
            }
        }
        check_token(&name).map_err(|reason| Ros2Error::Name { name: name.clone(), what: "node name", reason })?;
        let namespace = if namespace.starts_with('/') { namespace } else { format!("/{namespace}") };
        let namespace = if namespace.len() > 1 { namespace.trim_end_matches('/').to_string() } else { namespace };
        if namespace != "/" {
            check_absolute(&namespace).map_err(|reason| Ros2Error::Name { name: namespace.clone(), what: "namespace", reason })?;
        }
        let mut names = NodeNames { name, namespace, remaps: Vec::new() };
        for remap in remaps.iter().filter(|r| !r.from.starts_with("__")) {
            let from = names.expand(&remap.from)?;
            let to = names.expand(&remap.to)?;
            names.remaps.push((from, to));
        }
        Ok(names)
    }

    /// The node's base name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's namespace (`/` or `/a/b`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `/NAMESPACE/NAME`.
    pub fn fully_qualified(&self) -> String {
        self.join(&self.namespace, &self.name)
    }

    /// The absolute topic name `name` stands for: expanded, then remapped
    /// (the first matching rule wins).
    pub fn resolve(&self, name: &str) -> Result<String, Ros2Error> {
        let expanded = self.expand(name)?;
        Ok(self.remaps.iter().find(|(from, _)| *from == expanded).map_or(expanded, |(_, to)| to.clone()))
    }

    /// Expands `~` and relative names and checks the result.
    fn expand(&self, name: &str) -> Result<String, Ros2Error> {
        let expanded = if name == "~" {
            self.fully_qualified()
        } else if let Some(rest) = name.strip_prefix("~/") {
            self.join(&self.fully_qualified(), rest)
        } else if name.starts_with('/') {
            name.to_string()
        } else {
            self.join(&self.namespace, name)
        };
        check_absolute(&expanded).map_err(|reason| Ros2Error::Name { name: name.into(), what: "topic name", reason })?;
        Ok(expanded)
    }

    fn join(&self, base: &str, rest: &str) -> String {
        if base == "/" { format!("/{rest}") } else { format!("{base}/{rest}") }
    }
}

/// Checks an absolute name `/a/b/c`: tokens of letters, digits and `_`, not
/// starting with a digit, no `__`, no empty token.
fn check_absolute(name: &str) -> Result<(), String> {
    let rest = name.strip_prefix('/').ok_or("must start with /")?;
    rest.split('/').try_for_each(check_token)
}

/// Checks one name token.
fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("has an empty part (a leading, trailing or double /)".into());
    }
    if let Some(c) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(format!("'{c}' is not allowed (letters, digits, _ and / only)"));
    }
    if token.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("'{token}' starts with a digit"));
    }
    if token.contains("__") {
        return Err(format!("'{token}' has a repeated _"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remaps(rules: &[&str]) -> Vec<Remap> {
        rules.iter().map(|r| Remap::parse(r).unwrap()).collect()
    }

    #[test]
    fn names_resolve_the_ros_way() {
        let names = NodeNames::new("causeseg", "/robot1", &[]).unwrap();
        assert_eq!(names.fully_qualified(), "/robot1/causeseg");
        assert_eq!(names.resolve("~/labels").unwrap(), "/robot1/causeseg/labels");
        assert_eq!(names.resolve("image").unwrap(), "/robot1/image");
        assert_eq!(names.resolve("/diagnostics").unwrap(), "/diagnostics");
        let root = NodeNames::new("causeseg", "/", &[]).unwrap();
        assert_eq!(root.resolve("~/color").unwrap(), "/causeseg/color");
        assert_eq!(root.resolve("camera/image_raw").unwrap(), "/camera/image_raw");
        assert_eq!(NodeNames::new("n", "robot1/", &[]).unwrap().namespace(), "/robot1");
    }

    #[test]
    fn remaps_apply_to_resolved_names_and_rename_the_node() {
        let rules = remaps(&["~/labels:=/segmentation/labels", "image:=/cam/image_raw", "__node:=seg", "__ns:=/r2"]);
        let names = NodeNames::new("causeseg", "/", &rules).unwrap();
        assert_eq!(names.fully_qualified(), "/r2/seg");
        assert_eq!(names.resolve("~/labels").unwrap(), "/segmentation/labels");
        assert_eq!(names.resolve("/r2/image").unwrap(), "/cam/image_raw");
        assert_eq!(names.resolve("~/color").unwrap(), "/r2/seg/color");
    }

    #[test]
    fn bad_names_and_rules_are_errors() {
        let error = |r: Result<NodeNames, Ros2Error>| r.unwrap_err().to_string();
        assert_eq!(Remap::parse("labels=/x").unwrap_err().to_string(), "--remap 'labels=/x': expected FROM:=TO");
        assert_eq!(Remap::parse(":=/x").unwrap_err().to_string(), "--remap ':=/x': expected FROM:=TO");
        assert_eq!(error(NodeNames::new("2seg", "/", &[])), "node name '2seg': '2seg' starts with a digit");
        assert_eq!(error(NodeNames::new("my-node", "/", &[])), "node name 'my-node': '-' is not allowed (letters, digits, _ and / only)");
        assert_eq!(error(NodeNames::new("n", "/a//b", &[])), "namespace '/a//b': has an empty part (a leading, trailing or double /)");
        assert_eq!(error(NodeNames::new("n", "/", &remaps(&["a__b:=c"]))), "topic name 'a__b': 'a__b' has a repeated _");
        let names = NodeNames::new("n", "/", &[]).unwrap();
        assert_eq!(names.resolve("cam/").unwrap_err().to_string(), "topic name 'cam/': has an empty part (a leading, trailing or double /)");
    }
}
