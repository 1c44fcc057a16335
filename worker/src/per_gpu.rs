//! `outloud-worker --gpus all` (or `--gpus 0,2`): one worker process per GPU on a
//! multi-GPU machine, as torchrun's local agent starts one process per device.
//!
//! Each child sees only its own GPU (`CUDA_VISIBLE_DEVICES`) and runs as `cuda:0`, so
//! NCCL, torch and the child agree on the device without any binding call; each
//! registers as its own worker, so training gangs, synthesize shards and eval steps use
//! every GPU the same way. A child that exits on its own is started again after a
//! pause (the coordinator revokes what it held); SIGTERM or Ctrl-C is passed on to every
//! child, which hands its task back before exiting.

use std::time::Duration;

use tokio::process::Command;
use tokio::sync::mpsc;

/// How long a child that exited waits before it is started again.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// The GPUs `--gpus` names: `all` (every device torch sees) or a list of indices.
pub fn devices(wanted: &str, visible: usize) -> anyhow::Result<Vec<usize>> {
    let devices: Vec<usize> = if wanted == "all" {
        (0..visible).collect()
    } else {
        wanted
            .split(',')
            .map(|d| {
                d.trim().parse().map_err(|_| {
                    anyhow::anyhow!("--gpus: `{d}` is not a GPU index (use all or 0,1,...)")
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if visible == 0 {
        anyhow::bail!("--gpus {wanted}: this machine has no CUDA device that torch can use");
    }
    if let Some(missing) = devices.iter().find(|d| **d >= visible) {
        anyhow::bail!("--gpus: GPU {missing} does not exist; this machine has {visible}");
    }
    let mut unique = devices.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != devices.len() {
        anyhow::bail!("--gpus {wanted}: a GPU is named twice (NCCL cannot put two ranks on one)");
    }
    Ok(devices)
}

/// What starts the worker process of one GPU: this program, `args` (the worker's own
/// flags), bound to `gpu` alone.
pub fn child_command(program: &std::path::Path, args: &[String], gpu: usize) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .args(["--device", "cuda:0"])
        .env("CUDA_VISIBLE_DEVICES", gpu.to_string());
    command
}

/// The flags of the worker in `slot`: `args`, and its own metrics address when the
/// workers serve metrics (`(host, port)`: port + slot, or 0 for a free one each).
pub fn slot_args(args: &[String], metrics: Option<&(String, u16)>, slot: usize) -> Vec<String> {
    let mut args = args.to_vec();
    if let Some((host, port)) = metrics {
        let port = if *port == 0 { 0 } else { port + slot as u16 };
        args.extend(["--metrics-listen".to_string(), format!("{host}:{port}")]);
    }
    args
}

/// Runs one worker per GPU in `gpus` until a shutdown signal, restarting any that exit.
pub async fn supervise(
    gpus: Vec<usize>,
    args: Vec<String>,
    metrics: Option<(String, u16)>,
) -> anyhow::Result<()> {
    let program = std::env::current_exe()?;
    let (exited, mut exits) = mpsc::unbounded_channel();
    // Each child is awaited by its own task, which says when it exits: (slot, status).
    let start = |slot: usize| -> anyhow::Result<u32> {
        let gpu = gpus[slot];
        let args = slot_args(&args, metrics.as_ref(), slot);
        let mut child = child_command(&program, &args, gpu).spawn()?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(gpu, pid, "worker started");
        let exited = exited.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exited.send((slot, status));
        });
        Ok(pid)
    };
    let mut pids: Vec<u32> = (0..gpus.len()).map(&start).collect::<Result<_, _>>()?;
    let shutdown = outloud_core::telemetry::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some((slot, status)) = exits.recv() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                tracing::warn!(gpu = gpus[slot], %status, "worker exited; starting it again");
                tokio::time::sleep(RESTART_PAUSE).await;
                pids[slot] = start(slot)?;
            }
        }
    }
    for pid in &pids {
        // SAFETY: signalling a child we started; at worst it has already exited.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    for _ in &pids {
        exits.recv().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_named_or_all_and_never_twice() {
        assert_eq!(devices("all", 4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(devices("2,0", 4).unwrap(), vec![2, 0]);
        for (wanted, visible, says) in [
            ("all", 0, "no CUDA device"),
            ("4", 4, "GPU 4 does not exist"),
            ("1,1", 4, "named twice"),
            ("x", 4, "not a GPU index"),
        ] {
            let error = devices(wanted, visible).unwrap_err().to_string();
            assert!(error.contains(says), "{wanted}: {error}");
        }
    }

    #[test]
    fn each_worker_serves_metrics_on_a_port_of_its_own() {
        let metrics = ("0.0.0.0".to_string(), 9100);
        let args = slot_args(&[], Some(&metrics), 2);
        assert_eq!(args, ["--metrics-listen", "0.0.0.0:9102"]);
        let free = ("127.0.0.1".to_string(), 0);
        assert_eq!(slot_args(&[], Some(&free), 3)[1], "127.0.0.1:0");
        assert!(slot_args(&[], None, 1).is_empty());
    }

    #[test]
    fn each_child_sees_its_own_gpu_as_device_zero() {
        let args = vec!["--coordinator".to_string(), "http://c:1".to_string()];
        let command = child_command(std::path::Path::new("/bin/w"), &args, 3);
        let command = command.as_std();
        let given: Vec<_> = command
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        assert_eq!(given, ["--coordinator", "http://c:1", "--device", "cuda:0"]);
        let env: Vec<_> = command.get_envs().collect();
        assert_eq!(
            env,
            [(
                std::ffi::OsStr::new("CUDA_VISIBLE_DEVICES"),
                Some(std::ffi::OsStr::new("3"))
            )]
        );
    }
}
