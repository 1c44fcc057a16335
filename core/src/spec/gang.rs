//! Data-parallel gangs and placement in a spec: `world_size: N` (or `min_world_size` /
//! `max_world_size`, with `gang_grace_ms`) trains a phase on N worker processes at once,
//! each a rank; `device: cpu | cuda` and `device_memory_gb` say which workers may take
//! the phase's tasks.

use serde::{Deserialize, Serialize};

use super::{PhaseKind, PhaseSpec};

/// Ranks a gang may have; `min < max` lets it start with fewer after `grace_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangSize {
    pub min: u32,
    pub max: u32,
    pub grace_ms: u64,
}

/// The kind of device a step needs; a gang never mixes kinds (NCCL or TCP, not both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    /// The kind of what a worker advertises (`cpu`, `cuda(0)`, ...).
    pub fn of(advertised: &str) -> Self {
        if advertised.starts_with("cuda") {
            Self::Cuda
        } else {
            Self::Cpu
        }
    }
}

/// What every rank of a gang needs to know to train with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangPlan {
    /// The gang's largest size: the global batch is cut into this many micro-batches,
    /// so a smaller gang accumulates gradients and takes the same steps.
    pub max_world_size: u32,
    pub collective_timeout_ms: u64,
    pub check_ranks_every: u64,
}

/// How long a rank waits on the others in one collective, by default.
pub const DEFAULT_COLLECTIVE_TIMEOUT_MS: u64 = 120_000;
/// How often ranks compare parameter checksums, by default.
pub const DEFAULT_CHECK_RANKS_EVERY: u64 = 100;

/// What a step's tasks need of the worker they run on; every kind of step is placed by
/// it (training gangs, synthesize shards, eval steps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The kind of device; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
    /// The least memory the device must have (GPU memory on CUDA, host memory on CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

impl Placement {
    /// Whether a worker advertising `device` with `memory_bytes` of it may run the step.
    pub fn admits(&self, device: &str, memory_bytes: u64) -> bool {
        self.device
            .is_none_or(|kind| DeviceKind::of(device) == kind)
            && self.memory_bytes.is_none_or(|least| memory_bytes >= least)
    }

    /// Why no worker asking could take the step, for status.
    pub fn wanted(&self) -> String {
        let kind = self.device.map_or("any".into(), |k| format!("{k:?}"));
        match self.memory_bytes {
            Some(bytes) => format!(
                "a {kind} worker with {:.1} GiB of device memory",
                bytes as f64 / f64::from(1u32 << 30)
            ),
            None => format!("a {kind} worker"),
        }
    }
}

/// How long a gang below its largest size waits for more workers, by default.
pub const DEFAULT_GANG_GRACE_MS: u64 = 10_000;
/// The most ranks one gang may have.
pub const MAX_WORLD_SIZE: u32 = 1_024;

impl PhaseSpec {
    /// The phase's gang, when it trains on more than one rank.
    pub fn gang(&self) -> Option<GangSize> {
        let (min, max) = match self.world_size {
            Some(n) => (n, n),
            None => (
                self.min_world_size.unwrap_or(1),
                self.max_world_size.or(self.min_world_size).unwrap_or(1),
            ),
        };
        (max > 1).then_some(GangSize {
            min: min.max(1),
            max,
            grace_ms: self.gang_grace_ms.unwrap_or(DEFAULT_GANG_GRACE_MS),
        })
    }

    /// What the phase's tasks need of a worker.
    pub fn placement(&self) -> Placement {
        Placement {
            device: self.device,
            memory_bytes: self
                .device_memory_gb
                .map(|gb| (gb * f64::from(1u32 << 30)) as u64),
        }
    }

    /// What the phase's ranks need, when it trains on more than one.
    pub fn gang_plan(&self) -> Option<GangPlan> {
        self.gang().map(|gang| GangPlan {
            max_world_size: gang.max,
            collective_timeout_ms: self
                .collective_timeout_ms
                .unwrap_or(DEFAULT_COLLECTIVE_TIMEOUT_MS),
            check_ranks_every: self.check_ranks_every.unwrap_or(DEFAULT_CHECK_RANKS_EVERY),
        })
    }

    pub(super) fn gang_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let sizes = [
            ("world_size", self.world_size),
            ("min_world_size", self.min_world_size),
            ("max_world_size", self.max_world_size),
        ];
        for (field, size) in sizes {
            match size {
                Some(0) => problems.push((field, "must be at least 1".into())),
                Some(n) if n > MAX_WORLD_SIZE => {
                    problems.push((field, format!("must be at most {MAX_WORLD_SIZE}, got {n}")));
                }
                _ => {}
            }
        }
        if self.world_size.is_some()
            && (self.min_world_size.is_some() || self.max_world_size.is_some())
        {
            problems.push((
                "world_size",
                "give `world_size`, or `min_world_size` and `max_world_size`, not both".into(),
            ));
        }
        for (field, value) in [
            ("collective_timeout_ms", self.collective_timeout_ms),
            ("check_ranks_every", self.check_ranks_every),
        ] {
            if value == Some(0) {
                problems.push((field, "must be at least 1".into()));
            }
        }
        if self
            .device_memory_gb
            .is_some_and(|gb| !(gb.is_finite() && gb > 0.0))
        {
            problems.push((
                "device_memory_gb",
                "must be a positive number of GiB".into(),
            ));
        }
        if let (Some(min), Some(max)) = (self.min_world_size, self.max_world_size)
            && min > max
        {
            problems.push((
                "min_world_size",
                format!("{min} is more than max_world_size {max}"),
            ));
        }
        if let Some(gang) = self.gang()
            && self.batch_size < gang.max
        {
            problems.push((
                "batch_size",
                format!(
                    "{} rows cannot be shared by a gang of up to {} ranks: each rank needs one",
                    self.batch_size, gang.max
                ),
            ));
        }
        let trains = !matches!(self.kind, PhaseKind::Noop);
        if self.gang().is_some() && !trains {
            problems.push((
                "world_size",
                "only a training phase runs on several ranks".into(),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{DeviceKind, GangSize, parse};

    fn phase(extra: &str) -> Result<crate::spec::JobSpec, String> {
        let yaml = format!(
            "name: g\nstorage: /s\ndata: [{{name: t, kind: generated_text, words: 9}}]\n\
             phases: [{{name: l, kind: language, data: [t], steps: 1, {extra}}}]\n"
        );
        parse(&yaml, "g.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn gang_sizes_read_and_checked() {
        let gang = |extra| phase(extra).unwrap().phases[0].gang();
        assert_eq!(gang("world_size: 1"), None);
        let exact = GangSize {
            min: 4,
            max: 4,
            grace_ms: super::DEFAULT_GANG_GRACE_MS,
        };
        assert_eq!(gang("world_size: 4"), Some(exact));
        let range = GangSize {
            min: 2,
            max: 8,
            grace_ms: 50,
        };
        assert_eq!(
            gang("min_world_size: 2, max_world_size: 8, gang_grace_ms: 50"),
            Some(range)
        );
        let spec = phase("device: cuda").unwrap();
        assert_eq!(spec.phases[0].device, Some(DeviceKind::Cuda));
        assert_eq!(DeviceKind::of("cuda(1)"), DeviceKind::Cuda);
        assert_eq!(DeviceKind::of("cpu"), DeviceKind::Cpu);
        for (extra, says) in [
            ("world_size: 0", "world_size: must be at least 1"),
            ("world_size: 2, max_world_size: 3", "not both"),
            (
                "min_world_size: 3, max_world_size: 2",
                "3 is more than max_world_size 2",
            ),
            ("world_size: 5000", "must be at most 1024"),
            (
                "world_size: 2, collective_timeout_ms: 0",
                "must be at least 1",
            ),
            ("world_size: 32, batch_size: 8", "each rank needs one"),
            ("device_memory_gb: -1", "positive number of GiB"),
        ] {
            let error = phase(extra).unwrap_err();
            assert!(error.contains(says), "{extra}: {error}");
        }
    }
}
