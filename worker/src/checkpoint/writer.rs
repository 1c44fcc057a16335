//! Checkpoints written in the background, so that saving stalls training for no longer
//! than a copy to host memory.
//!
//! Between two steps the training loop copies the weights and the optimizer state into
//! host buffers ([`Writer::submit`]; pinned memory on CUDA, reused from one checkpoint
//! to the next) and hands them to a thread of its own, which serializes, uploads and
//! writes the manifest last ([`super::save`]): a checkpoint without its manifest does
//! not exist. At most one checkpoint is in flight, so memory stays bounded at one set
//! of host buffers; a checkpoint due while the previous one is still being written is
//! skipped, and says so ([`Writer::busy`]). [`Writer::wait`] waits for the one in
//! flight, as a task must before it reports done. After each commit the same thread
//! deletes what the phase's retention lets go ([`super::retention`]), off the training
//! thread too.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use outloud_core::storage::Location;
use outloud_core::task::CheckpointRef;
use tch::{Device, Tensor};

use super::{Manifest, ToSave};
use crate::error::WorkerError;
use crate::ledger::Ledger;

/// Named tensors on the host.
type Named = Vec<(String, Tensor)>;

/// What one checkpoint writes, its tensors in host buffers.
struct Snapshot {
    location: Location,
    weights: Named,
    optimizer: Named,
    ledger: Ledger,
    manifest: Manifest,
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
            for snapshot in inbox {
                let result = write(&runtime, &snapshot, &tokenizer);
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
            in_flight: None,
        }
    }

    /// The step of the checkpoint still being written, if one is.
    pub fn busy(&self) -> Option<u64> {
        self.in_flight
    }

    /// Copies `weights` and `optimizer` state into the host buffers and hands the
    /// checkpoint to the writing thread. Call only when not [`Writer::busy`].
    pub fn submit(
        &mut self,
        location: Location,
        weights: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        ledger: &Ledger,
        manifest: Manifest,
    ) {
        assert!(self.in_flight.is_none(), "one checkpoint in flight at most");
        let (mut weight_buffers, mut optimizer_buffers) = std::mem::take(&mut self.buffers);
        copy_to_host(&mut weight_buffers, weights);
        copy_to_host(&mut optimizer_buffers, optimizer);
        self.in_flight = Some(manifest.step);
        let snapshot = Snapshot {
            location,
            weights: weight_buffers,
            optimizer: optimizer_buffers,
            ledger: ledger.clone(),
            manifest,
        };
        let sent = self.snapshots.as_ref().map(|s| s.send(snapshot).is_ok());
        assert_eq!(
            sent,
            Some(true),
            "the checkpoint thread outlives the writer"
        );
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

/// Copies `live` into `buffers`, (re)made on the host when they do not match: pinned
/// on CUDA, so the copy runs at the link's full speed.
fn copy_to_host(buffers: &mut Named, live: &[(String, Tensor)]) {
    let fits = buffers.len() == live.len()
        && buffers
            .iter()
            .zip(live)
            .all(|((a, x), (b, y))| a == b && x.size() == y.size() && x.kind() == y.kind());
    tch::no_grad(|| {
        if !fits {
            *buffers = live
                .iter()
                .map(|(name, t)| {
                    let host = Tensor::empty(t.size(), (t.kind(), Device::Cpu));
                    let host = match t.device() {
                        Device::Cuda(_) => host.pin_memory(t.device()),
                        _ => host,
                    };
                    (name.clone(), host)
                })
                .collect();
        }
        for ((_, host), (_, t)) in buffers.iter_mut().zip(live) {
            host.copy_(t);
        }
    });
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
    tracing::info!(
        step = snapshot.manifest.step,
        seconds = started.elapsed().as_secs_f64(),
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
    use tch::Kind;

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

        writer.submit(root.join("a"), &named(&live), &named(&live), &ledger, at(1));
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
        writer.submit(root.join("b"), &named(&live), &named(&live), &ledger, at(2));
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
