//! What GPUs this machine has, for `engine info` and the TensorRT engine
//! cache key: `nvidia-smi` on desktop and server GPUs, the device tree on a
//! Jetson (whose integrated GPU `nvidia-smi` may not list).

use std::process::Command;

/// One NVIDIA GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Product name, e.g. "NVIDIA H200" or "NVIDIA Jetson AGX Orin".
    pub name: String,
    /// Memory in MiB, when known.
    pub memory_mib: Option<u64>,
    /// Compute capability, e.g. "9.0", when known.
    pub compute_capability: Option<String>,
    /// Driver version, when known.
    pub driver: Option<String>,
}

impl Gpu {
    /// A file-name-safe identity for caches: name and compute capability.
    pub fn cache_key(&self) -> String {
        let mut key: String = self.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        if let Some(cc) = &self.compute_capability {
            key.push_str(&format!("-sm{}", cc.replace('.', "")));
        }
        key
    }
}

/// The GPUs `nvidia-smi` lists, else a Jetson's GPU, else none.
pub fn gpus() -> Vec<Gpu> {
    let listed = Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total,compute_cap,driver_version", "--format=csv,noheader,nounits"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout)))
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    jetson_model().map(|name| vec![Gpu { name, memory_mib: None, compute_capability: None, driver: None }]).unwrap_or_default()
}

/// Parses `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version
/// --format=csv,noheader,nounits` output.
pub fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    let known = |field: &str| (!field.is_empty() && !field.starts_with('[') && field != "N/A").then(|| field.to_string());
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let name = known(fields.first()?)?;
            Some(Gpu {
                name,
                memory_mib: fields.get(1).and_then(|m| m.parse().ok()),
                compute_capability: fields.get(2).and_then(|c| known(c)),
                driver: fields.get(3).and_then(|d| known(d)),
            })
        })
        .collect()
}

/// The board name of a Jetson (from the device tree), if this is one.
fn jetson_model() -> Option<String> {
    let model = std::fs::read_to_string("/proc/device-tree/model").ok()?;
    let model = model.trim_end_matches('\0').trim().to_string();
    model.contains("Jetson").then_some(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_gpus_with_a_cache_key() {
        let gpus = parse_nvidia_smi("NVIDIA H200, 143771, 9.0, 570.124.06\nOrin (nvgpu), [N/A], 8.7, 540.4.0\n");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0], Gpu { name: "NVIDIA H200".into(), memory_mib: Some(143771), compute_capability: Some("9.0".into()), driver: Some("570.124.06".into()) });
        assert_eq!(gpus[0].cache_key(), "NVIDIA-H200-sm90");
        assert_eq!(gpus[1].memory_mib, None);
        assert_eq!(gpus[1].cache_key(), "Orin--nvgpu--sm87");
        assert!(parse_nvidia_smi("").is_empty());
    }
}
