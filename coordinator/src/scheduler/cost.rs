//! The cost ledger of a task: the device time its leases took, by the kind of device
//! they ran on: CPU thread-seconds (a lease's seconds times its worker's threads) or
//! GPU-seconds per GPU model. A lease's time is counted when it ends (succeeded,
//! failed, lost, revoked or cancelled), every attempt and duplicate included.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Millis, WorkerInfo};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceTime {
    /// Device kind -> device-seconds of the leases that ended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seconds: BTreeMap<String, f64>,
    /// Leases held now: worker -> (device kind, devices it counts for, since).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    open: BTreeMap<String, (String, f64, Millis)>,
    /// GPU energy each attempt (by lease epoch) drew, as it last reported (joules).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    energy: BTreeMap<u64, f64>,
    /// The most GPU memory any attempt had in use.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub peak_gpu_memory_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The device kind of GPU-seconds, before the GPU's model: `GPU-s NVIDIA H100`.
pub const GPU_SECONDS: &str = "GPU-s";

impl WorkerInfo {
    /// What a second of this worker's lease costs: the kind of device, and how many.
    pub fn cost_unit(&self) -> (String, f64) {
        if self.device.starts_with("cuda") {
            (format!("{GPU_SECONDS} {}", self.device_name), 1.0)
        } else {
            ("CPU thread-s".to_string(), f64::from(self.threads.max(1)))
        }
    }
}

impl DeviceTime {
    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty() && self.open.is_empty()
    }

    /// `worker` starts holding a lease on the task at `now`.
    pub fn start(&mut self, worker: &str, info: Option<&WorkerInfo>, now: Millis) {
        let (kind, devices) =
            info.map_or(("unknown device-s".to_string(), 1.0), WorkerInfo::cost_unit);
        self.open.insert(worker.to_string(), (kind, devices, now));
    }

    /// `worker`'s lease on the task ends at `now`: its time is counted.
    pub fn end(&mut self, worker: &str, now: Millis) {
        if let Some((kind, devices, since)) = self.open.remove(worker) {
            let seconds = now.saturating_sub(since) as f64 / 1e3;
            *self.seconds.entry(kind).or_default() += seconds * devices;
        }
    }

    /// What the attempt of lease `epoch` measured of its GPU, as it reported.
    pub fn measured(&mut self, epoch: u64, metrics: &outloud_core::task::Metrics) {
        if metrics.gpu_energy_joules > 0.0 {
            self.energy.insert(epoch, metrics.gpu_energy_joules);
        }
        self.peak_gpu_memory_bytes = self
            .peak_gpu_memory_bytes
            .max(metrics.peak_gpu_memory_bytes);
    }

    /// GPU energy of every attempt (joules); None where none was measured.
    pub fn energy_joules(&self) -> Option<f64> {
        (!self.energy.is_empty()).then(|| self.energy.values().sum())
    }

    /// Adds what `other` counted.
    pub fn add(&mut self, other: &DeviceTime) {
        for (kind, seconds) in &other.seconds {
            *self.seconds.entry(kind.clone()).or_default() += seconds;
        }
        let base = self.energy.len() as u64;
        for (i, joules) in other.energy.values().enumerate() {
            // Attempts of different tasks: keep them apart.
            self.energy.insert(base + i as u64, *joules);
        }
        self.peak_gpu_memory_bytes = self.peak_gpu_memory_bytes.max(other.peak_gpu_memory_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_leases_count_by_device_kind() {
        let cpu = WorkerInfo {
            threads: 4,
            ..WorkerInfo::for_tests("a")
        };
        let gpu = WorkerInfo {
            device: "cuda:0".into(),
            device_name: "NVIDIA H100".into(),
            ..WorkerInfo::for_tests("b")
        };
        let mut time = DeviceTime::default();
        time.start("a", Some(&cpu), 1_000);
        time.start("b", Some(&gpu), 2_000);
        time.end("a", 3_500);
        time.end("a", 9_000); // not held: nothing more
        assert_eq!(time.seconds["CPU thread-s"], 10.0);
        assert!(
            !time.seconds.contains_key("GPU-s NVIDIA H100"),
            "still running"
        );
        time.end("b", 5_000);
        assert_eq!(time.seconds["GPU-s NVIDIA H100"], 3.0);
    }

    #[test]
    fn gpu_energy_counts_each_attempt_once_at_its_last_report() {
        use outloud_core::task::Metrics;
        let report = |joules: f64, bytes: u64| Metrics {
            gpu_energy_joules: joules,
            peak_gpu_memory_bytes: bytes,
            ..Metrics::default()
        };
        let mut time = DeviceTime::default();
        assert_eq!(time.energy_joules(), None);
        time.measured(1, &report(10.0, 1 << 30));
        time.measured(1, &report(25.0, 3 << 30)); // cumulative within the attempt
        time.measured(2, &report(40.0, 2 << 30)); // the retry, from zero
        time.measured(2, &report(0.0, 0)); // a CPU-side report says nothing
        assert_eq!(time.energy_joules(), Some(65.0));
        assert_eq!(time.peak_gpu_memory_bytes, 3 << 30);
        // A step adds its tasks' ledgers: attempts of different tasks stay apart.
        let mut step = DeviceTime::default();
        step.add(&time);
        step.add(&time);
        assert_eq!(step.energy_joules(), Some(130.0));
    }
}
