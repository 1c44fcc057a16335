//! What a task's GPU costs, for the cost ledger: the most device memory in use seen at
//! any report, and the energy the GPU drew since the task started (NVML's total-energy
//! counter, Volta and later). Each is left out where the machine cannot say: no GPU, no
//! NVML library, a GPU without the counter.

use nvml_wrapper::Nvml;
use outloud_core::task::Metrics;
use tch::Device;

pub struct GpuMeter {
    nvml: Nvml,
    /// NVML's name of the CUDA device (`GPU-<uuid>`): CUDA's and NVML's indices differ
    /// under `CUDA_VISIBLE_DEVICES`.
    uuid: String,
    /// The energy counter when the task started (millijoules).
    start_mj: Option<u64>,
    peak_bytes: u64,
}

impl GpuMeter {
    /// A meter of `device`'s GPU from now on; None on a CPU or without NVML.
    pub fn start(device: Device) -> Option<Self> {
        let Device::Cuda(index) = device else {
            return None;
        };
        let uuid = cuda_uuid(index)?;
        let nvml = Nvml::init()
            .map_err(|e| tracing::debug!(error = %e, "no NVML: GPU energy is not measured"))
            .ok()?;
        let start_mj = nvml
            .device_by_uuid(uuid.as_str())
            .and_then(|d| d.total_energy_consumption())
            .ok();
        Some(Self {
            nvml,
            uuid,
            start_mj,
            peak_bytes: 0,
        })
    }

    /// Writes what the GPU has cost so far into `metrics`.
    pub fn measure(&mut self, metrics: &mut Metrics) {
        let Ok(device) = self.nvml.device_by_uuid(self.uuid.as_str()) else {
            return;
        };
        if let Ok(memory) = device.memory_info() {
            self.peak_bytes = self.peak_bytes.max(memory.used);
        }
        metrics.peak_gpu_memory_bytes = self.peak_bytes;
        if let (Some(start), Ok(now)) = (self.start_mj, device.total_energy_consumption()) {
            metrics.gpu_energy_joules = now.saturating_sub(start) as f64 / 1e3;
        }
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as NVML names the CUDA device `index`.
fn cuda_uuid(index: usize) -> Option<String> {
    use cudarc::driver::{result as driver, sys};
    // SAFETY: only tries to open the library (cudarc panics on a call without it).
    if !unsafe { sys::is_culib_present() } {
        return None;
    }
    driver::init().ok()?;
    let device = driver::device::get(index as i32).ok()?;
    let uuid = driver::device::get_uuid(device).ok()?;
    Some(uuid_text(&uuid.bytes.map(|b| b as u8)))
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex = hex::encode(bytes);
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_spelled_as_nvml_spells_them() {
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
        assert_eq!(
            uuid_text(&bytes),
            "GPU-00112233-4455-6677-8899-aabbccddeeff"
        );
    }

    #[test]
    fn a_cpu_has_no_meter() {
        assert!(GpuMeter::start(Device::Cpu).is_none());
    }
}
