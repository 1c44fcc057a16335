//! Checkpoints written in the background, so that saving stalls training for no longer
//! than a copy to host memory.
//!
//! Between two steps the training loop copies the weights and the optimizer state into
//! host buffers laid out like it ([`Writer::submit`], reused from one checkpoint to the
//! next) and hands them to a thread of its own, which serializes, uploads and writes
//! the manifest last ([`super::save`]): a checkpoint without its manifest does
//! not exist. At most one checkpoint is in flight, so memory stays bounded at one set
//! of host buffers; a checkpoint due while the previous one is still being written is
//! skipped, and says so ([`Writer::busy`]). [`Writer::wait`] waits for the one in
//! flight, as a task must before it reports done. After each commit the same thread
//! deletes what the phase's retention lets go ([`super::retention`]), off the training
//! thread too.
//!
//! On CUDA the loop only copies the state into device buffers (1.4 ms for the base
//! preset with its optimizer state on an H100); the thread copies those into pinned
//! host buffers on a side stream while the next steps run ([`aside`]). That costs one
//! more copy of the state in device memory, and spares the loop the transfer over the
//! host link (33 ms there).

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use outloud_core::storage::Location;
use outloud_core::task::CheckpointRef;
use tch::Tensor;

use super::{Manifest, ToSave, aside};
use crate::error::WorkerError;
use crate::ledger::Ledger;

/// Named tensors on the host.
type Named = Vec<(String, Tensor)>;

/// What one checkpoint writes, its tensors in host buffers (or still on their way
/// there from device buffers, on CUDA).
struct Snapshot {
    location: Location,
    weights: Named,
    optimizer: Named,
    ledger: Ledger,
    manifest: Manifest,
    staged: Option<aside::Staged>,
}

impl Snapshot {
    /// Waits for the state staged on the device to reach the host buffers, if it is.
    fn drained(&mut self) -> Result<(), WorkerError> {
        let Some(staged) = self.staged.take() else {
            return Ok(());
        };
        let host: Vec<&Tensor> = self
            .weights
            .iter()
            .chain(&self.optimizer)
            .map(|(_, t)| t)
            .collect();
        staged.drain(&host).map_err(WorkerError::Config)
    }
}

/// A write that ended: the buffers to reuse, and the checkpoint or why it failed.
struct Written {
    weights: Named,
    optimizer: Named,
    result: Result<CheckpointRef, WorkerError>,
}

pub struct Writer {
    snapshots: Option<SyncSender<Snapshot>>,
    written: Receiver<Written>,
    thread: Option<JoinHandle<()>>,
    /// The host buffers while no write holds them (empty before the first checkpoint).
    buffers: (Named, Named),
    /// On CUDA, the device buffers the state is staged in (see [`aside`]).
    staging: (Named, Named),
    /// The step of the checkpoint being written.
    in_flight: Option<u64>,
}

impl Writer {
    /// A writer whose thread uploads through `runtime`, saving `tokenizer` with every
    /// checkpoint, and keeping the newest `keep` of the task's (in `task_folder`) when
    /// retention is set.
    pub fn start(
        runtime: tokio::runtime::Handle,
        tokenizer: Vec<u8>,
        retention: Option<(Location, usize)>,
    ) -> Self {
        let (snapshots, inbox) = sync_channel::<Snapshot>(1);
        let (outbox, written) = sync_channel(1);
        let span = tracing::Span::current();
        let thread = std::thread::spawn(move || {
            let _entered = span.enter();
            for mut snapshot in inbox {
                let result = snapshot
                    .drained()
                    .and_then(|()| write(&runtime, &snapshot, &tokenizer));
                if let (Ok(written), Some((task_folder, keep))) = (&result, &retention) {
                    let attempt = super::retention::attempt_of(&written.url);
                    prune(&runtime, task_folder, *keep, attempt);
                }
                let Snapshot {
                    weights, optimizer, ..
                } = snapshot;
                let done = Written {
                    weights,
                    optimizer,
                    result,
                };
                if outbox.send(done).is_err() {
                    return;
                }
            }
        });
        Self {
            snapshots: Some(snapshots),
            written,
            thread: Some(thread),
            buffers: (Vec::new(), Vec::new()),
            staging: (Vec::new(), Vec::new()),
            in_flight: None,
        }
    }

    /// The step of the checkpoint still being written, if one is.
    pub fn busy(&self) -> Option<u64> {
        self.in_flight
    }

    /// Copies `weights` and `optimizer` state into the host buffers (on CUDA, into
    /// device buffers, from which the writing thread copies them to the host) and hands
    /// the checkpoint to the writing thread. Call only when not [`Writer::busy`].
    pub fn submit(
        &mut self,
        location: Location,
        weights: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        ledger: &Ledger,
        manifest: Manifest,
    ) -> Result<(), WorkerError> {
        assert!(self.in_flight.is_none(), "one checkpoint in flight at most");
        let (mut weight_buffers, mut optimizer_buffers) = std::mem::take(&mut self.buffers);
        mirror(&mut weight_buffers, weights, true)?;
        mirror(&mut optimizer_buffers, optimizer, true)?;
        let staged = self.stage(weights, optimizer)?;
        if staged.is_none() {
            copy(&weight_buffers, weights)?;
            copy(&optimizer_buffers, optimizer)?;
        }
        self.in_flight = Some(manifest.step);
        let snapshot = Snapshot {
            location,
            weights: weight_buffers,
            optimizer: optimizer_buffers,
            ledger: ledger.clone(),
            manifest,
            staged,
        };
        let sent = self.snapshots.as_ref().map(|s| s.send(snapshot).is_ok());
        assert_eq!(
            sent,
            Some(true),
            "the checkpoint thread outlives the writer"
        );
        Ok(())
    }

    /// On CUDA, copies the state into the staging buffers on the training stream, for
    /// the writing thread to drain; `None` elsewhere, or if staging failed (then the
    /// state is copied to the host at once, and the log says why).
    fn stage(
        &mut self,
        weights: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
    ) -> Result<Option<aside::Staged>, WorkerError> {
        if !weights.first().is_some_and(|(_, t)| t.device().is_cuda()) {
            return Ok(None);
        }
        mirror(&mut self.staging.0, weights, false)?;
        mirror(&mut self.staging.1, optimizer, false)?;
        let buffers: Vec<&Tensor> = self
            .staging
            .0
            .iter()
            .chain(&self.staging.1)
            .map(|(_, t)| t)
            .collect();
        let live: Vec<&Tensor> = weights.iter().chain(optimizer).map(|(_, t)| t).collect();
        let staged = aside::stage(&buffers, &live);
        if let Err(e) = &staged {
            tracing::warn!(error = %e, "checkpoint copied to the host at once");
        }
        Ok(staged.ok())
    }

    /// The checkpoint committed since the last call, if one was; the write's error if
    /// it failed (storage errors name the URL).
    pub fn poll(&mut self) -> Result<Option<CheckpointRef>, WorkerError> {
        match self.written.try_recv() {
            Ok(written) => self.take(written).map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(thread_gone()),
        }
    }

    /// Waits for the checkpoint in flight, if any, and answers it once committed.
    pub fn wait(&mut self) -> Result<Option<CheckpointRef>, WorkerError> {
        if self.in_flight.is_none() {
            return Ok(None);
        }
        let written = self.written.recv().map_err(|_| thread_gone())?;
        self.take(written).map(Some)
    }

    fn take(&mut self, written: Written) -> Result<CheckpointRef, WorkerError> {
        self.in_flight = None;
        self.buffers = (written.weights, written.optimizer);
        written.result
    }
}

impl Drop for Writer {
    /// Lets a write in flight finish (a task that stops mid-phase keeps its newest
    /// checkpoint whole), then ends the thread.
    fn drop(&mut self) {
        self.snapshots = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn thread_gone() -> WorkerError {
    WorkerError::Config("the checkpoint thread stopped".into())
}

/// Makes `buffers` match `live` (names, shapes, kinds), laid out like it (see
/// [`aside::mirror`]), unless they do: on the host (pinned when `live` is on CUDA), or
/// on `live`'s device.
fn mirror(
    buffers: &mut Named,
    live: &[(String, Tensor)],
    on_host: bool,
) -> Result<(), WorkerError> {
    let fits = buffers.len() == live.len()
        && buffers
            .iter()
            .zip(live)
            .all(|((a, x), (b, y))| a == b && x.size() == y.size() && x.kind() == y.kind());
    if fits || live.is_empty() {
        return Ok(());
    }
    let tensors: Vec<&Tensor> = live.iter().map(|(_, t)| t).collect();
    let made = aside::mirror(&tensors, on_host).map_err(WorkerError::Config)?;
    *buffers = live
        .iter()
        .map(|(name, _)| name.clone())
        .zip(made)
        .collect();
    Ok(())
}

/// Copies `live` into `buffers`, waiting for the copy.
fn copy(buffers: &Named, live: &[(String, Tensor)]) -> Result<(), WorkerError> {
    let dst: Vec<&Tensor> = buffers.iter().map(|(_, t)| t).collect();
    let src: Vec<&Tensor> = live.iter().map(|(_, t)| t).collect();
    aside::copy(&dst, &src).map_err(WorkerError::Config)
}

/// Deletes the task's checkpoints past the newest `keep`; a failure only leaves more
/// behind, so it is reported, not raised.
fn prune(runtime: &tokio::runtime::Handle, task_folder: &Location, keep: usize, attempt: u64) {
    match runtime.block_on(super::retention::prune(task_folder, keep, attempt)) {
        Ok(deleted) if !deleted.is_empty() => {
            tracing::info!(?deleted, keep, "older checkpoints deleted")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "older checkpoints could not be deleted"),
    }
}

fn write(
    runtime: &tokio::runtime::Handle,
    snapshot: &Snapshot,
    tokenizer: &[u8],
) -> Result<CheckpointRef, WorkerError> {
    let pieces = ToSave {
        weights: &snapshot.weights,
        optimizer: Some(&snapshot.optimizer),
        tokenizer,
        ledger: Some(&snapshot.ledger),
    };
    let started = std::time::Instant::now();
    runtime.block_on(super::save(
        &snapshot.location,
        pieces,
        snapshot.manifest.clone(),
    ))?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes: usize = (snapshot.weights.iter().chain(&snapshot.optimizer))
        .map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes())
        .sum::<usize>()
        + tokenizer.len();
    crate::metrics::checkpoint_written(bytes as u64, seconds);
    tracing::info!(
        step = snapshot.manifest.step,
        seconds,
        checkpoint = %snapshot.location.url(),
        "checkpoint committed"
    );
    Ok(CheckpointRef {
        url: snapshot.location.url().to_string(),
        step: snapshot.manifest.step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::manifest;
    use tch::{Device, Kind};

    #[test]
    fn buffers_mirror_the_flat_layout_and_copy_by_storage() {
        // Two views of one flat buffer, as parameters and moments are, and one alone.
        let flat = Tensor::randn([100], (Kind::Float, Device::Cpu));
        let live = vec![
            ("a".to_string(), flat.narrow(0, 0, 60).view([6, 10])),
            ("b".to_string(), flat.narrow(0, 60, 40)),
            (
                "c".to_string(),
                Tensor::randn([3], (Kind::Float, Device::Cpu)),
            ),
        ];
        let mut buffers = Vec::new();
        mirror(&mut buffers, &live, true).unwrap();
        let address = |t: &Tensor| t.data_ptr() as usize;
        // Laid out alike: b sits 60 floats after a in the one new storage.
        assert_eq!(address(&buffers[1].1) - address(&buffers[0].1), 240);
        assert_ne!(address(&buffers[0].1), address(&live[0].1));
        copy(&buffers, &live).unwrap();
        for ((_, copied), (name, t)) in buffers.iter().zip(&live) {
            assert!(copied.equal(t), "{name}");
        }
        // Buffers laid out otherwise are copied tensor by tensor, just as well.
        let apart: Named = live
            .iter()
            .map(|(n, t)| (n.clone(), t.zeros_like()))
            .collect();
        copy(&apart, &live).unwrap();
        assert!(apart.iter().zip(&live).all(|((_, x), (_, y))| x.equal(y)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_in_the_background_one_at_a_time_into_reused_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let root = Location::open(url.as_str()).unwrap();
        let handle = tokio::runtime::Handle::current();
        let mut writer = Writer::start(handle, b"{}".to_vec(), None);
        let live = Tensor::randn([64, 64], (Kind::Float, Device::Cpu));
        let named = |t: &Tensor| vec![("w".to_string(), t.shallow_clone())];
        let ledger = Ledger::default();
        let at = |step| Manifest { step, ..manifest() };

        writer
            .submit(root.join("a"), &named(&live), &named(&live), &ledger, at(1))
            .unwrap();
        assert_eq!(writer.busy(), Some(1));
        // The snapshot is a copy: the live weights move on while it is written.
        let before = live.copy();
        let _ = tch::no_grad(|| live.shallow_clone().fill_(7.0));
        let done = tokio::task::block_in_place(|| writer.wait())
            .unwrap()
            .unwrap();
        assert_eq!(done.step, 1);
        assert!(done.url.ends_with("/a"), "{}", done.url);
        assert_eq!(writer.busy(), None);
        let loaded = super::super::load(&root.join("a")).await.unwrap();
        assert!(loaded.weights[0].1.equal(&before));

        // The next checkpoint reuses the same host buffers: memory stays bounded.
        let buffer = writer.buffers.0[0].1.data_ptr();
        writer
            .submit(root.join("b"), &named(&live), &named(&live), &ledger, at(2))
            .unwrap();
        let done = tokio::task::block_in_place(|| writer.wait())
            .unwrap()
            .unwrap();
        assert_eq!(done.step, 2);
        assert_eq!(writer.buffers.0[0].1.data_ptr(), buffer);
        let loaded = super::super::load(&root.join("b")).await.unwrap();
        assert!(loaded.weights[0].1.equal(&live));
        assert_eq!(tokio::task::block_in_place(|| writer.poll()).unwrap(), None);
    }
}
