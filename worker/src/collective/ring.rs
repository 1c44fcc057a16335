//! The CPU backend: a ring of TCP connections between the ranks of a gang, each rank
//! sending to the next and receiving from the one before.
//!
//! All-reduce is the bandwidth-optimal ring: the buffer is cut into one chunk per rank;
//! in `n - 1` reduce-scatter steps each rank passes a chunk on and adds the one it
//! receives, after which rank `r` holds the full sum of chunk `r + 1`; in `n - 1`
//! all-gather steps the finished chunks travel round. Each rank sends and receives
//! `2 (n - 1) / n` times the buffer, whatever `n`. Every read and write has a timeout, so
//! a rank that died or hangs turns into an error on the others, never a wait.
//!
//! Ranks exchange raw native-endian floats: every rank of a gang runs the same build on
//! the same kind of machine (a gang never mixes device kinds).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use super::{Collective, CollectiveError, check_buffer, chunk_bounds};

/// One rank's end of the ring.
pub struct Ring {
    rank: usize,
    world: usize,
    /// To rank `rank + 1` and from rank `rank - 1` (none in a gang of one).
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
    timeout: Duration,
    sent: Vec<u8>,
    received: Vec<u8>,
}

/// A rank's listener, bound before the rendezvous so its address can be published.
pub fn listen(host: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind((host, 0))
}

impl Ring {
    /// Joins the ring as `rank` of `addresses.len()`: connects to the next rank's
    /// listener and accepts the previous rank on `listener`, both within `timeout`.
    pub fn join(
        rank: usize,
        addresses: &[SocketAddr],
        listener: TcpListener,
        timeout: Duration,
    ) -> Result<Self, CollectiveError> {
        let world = addresses.len();
        let mut ring = Self {
            rank,
            world,
            next: None,
            prev: None,
            timeout,
            sent: Vec::new(),
            received: Vec::new(),
        };
        if world <= 1 {
            return Ok(ring);
        }
        let deadline = Instant::now() + timeout;
        let next_address = addresses[(rank + 1) % world];
        let (next, prev) = std::thread::scope(|scope| {
            let accepting = scope.spawn(|| ring.accept_previous(&listener, deadline));
            let next = ring.connect_next(next_address, deadline);
            let prev = accepting
                .join()
                .unwrap_or_else(|_| Err(ring.protocol("the accepting thread panicked".into())));
            (next, prev)
        });
        // Who joined is the more telling error: a stranger, or nobody.
        ring.prev = Some(prev?);
        ring.next = Some(next?);
        Ok(ring)
    }

    fn previous_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn protocol(&self, message: String) -> CollectiveError {
        CollectiveError::Protocol {
            rank: self.rank,
            message,
        }
    }

    fn failure(&self, peer: usize, during: &'static str, e: std::io::Error) -> CollectiveError {
        let peer = format!("rank {peer}");
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => CollectiveError::Timeout {
                rank: self.rank,
                peer,
                after: self.timeout,
                during,
            },
            _ => CollectiveError::Io {
                rank: self.rank,
                peer,
                during,
                source: e,
            },
        }
    }

    /// Connects to the next rank, retrying until it listens or `deadline` passes, and
    /// says who this is.
    fn connect_next(
        &self,
        address: SocketAddr,
        deadline: Instant,
    ) -> Result<TcpStream, CollectiveError> {
        let next = (self.rank + 1) % self.world;
        let stream = loop {
            match TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(self.failure(next, "joining the ring", e));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.configure(&stream)
            .map_err(|e| self.failure(next, "joining the ring", e))?;
        let hello = [self.rank as u32, self.world as u32]
            .map(u32::to_le_bytes)
            .concat();
        (&stream)
            .write_all(&hello)
            .map_err(|e| self.failure(next, "joining the ring", e))?;
        Ok(stream)
    }

    /// Accepts the previous rank, refusing anyone else.
    fn accept_previous(
        &self,
        listener: &TcpListener,
        deadline: Instant,
    ) -> Result<TcpStream, CollectiveError> {
        let previous = self.previous_rank();
        let during = "joining the ring";
        listener
            .set_nonblocking(true)
            .map_err(|e| self.failure(previous, during, e))?;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let timed_out = std::io::Error::from(ErrorKind::TimedOut);
                    return Err(self.failure(previous, during, timed_out));
                }
                Err(e) => return Err(self.failure(previous, during, e)),
            }
        };
        stream
            .set_nonblocking(false)
            .and_then(|()| self.configure(&stream))
            .map_err(|e| self.failure(previous, during, e))?;
        let mut hello = [0u8; 8];
        (&stream)
            .read_exact(&mut hello)
            .map_err(|e| self.failure(previous, during, e))?;
        let said = |i: usize| u32::from_le_bytes(hello[4 * i..4 * i + 4].try_into().unwrap());
        if (said(0) as usize, said(1) as usize) != (previous, self.world) {
            return Err(self.protocol(format!(
                "expected rank {previous} of {}, heard from rank {} of {}",
                self.world,
                said(0),
                said(1)
            )));
        }
        Ok(stream)
    }

    fn configure(&self, stream: &TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))
    }

    /// Sends `send` to the next rank while receiving `receive_len` floats from the
    /// previous one into `self.received`, at the same time (neither side may wait for
    /// the other's read: large chunks would fill both sockets' buffers).
    fn exchange(
        &mut self,
        send: &[f32],
        receive_len: usize,
        during: &'static str,
    ) -> Result<(), CollectiveError> {
        self.sent.clear();
        self.sent.extend(send.iter().flat_map(|x| x.to_ne_bytes()));
        self.received.resize(4 * receive_len, 0);
        let (next, prev) = (self.next.as_mut(), self.prev.as_mut());
        let (Some(next), Some(prev)) = (next, prev) else {
            return Ok(());
        };
        let (sent, received) = (&self.sent, &mut self.received);
        let (wrote, read) = std::thread::scope(|scope| {
            let writing = scope.spawn(|| next.write_all(sent));
            let read = prev.read_exact(received);
            let wrote = writing
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the sending thread panicked")));
            (wrote, read)
        });
        let (next_rank, previous) = ((self.rank + 1) % self.world, self.previous_rank());
        wrote.map_err(|e| self.failure(next_rank, during, e))?;
        read.map_err(|e| self.failure(previous, during, e))
    }

    /// The floats last received.
    fn received(&self) -> impl Iterator<Item = f32> + '_ {
        self.received
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn all_reduce_sum(&mut self, buffer: &mut Tensor) -> Result<(), CollectiveError> {
        let data = self.host_floats(buffer)?;
        self.sum_slice(data)
    }

    fn broadcast(&mut self, buffer: &mut Tensor, root: usize) -> Result<(), CollectiveError> {
        let data = self.host_floats(buffer)?;
        self.broadcast_slice(data, root)
    }
}

impl Ring {
    /// The floats of a flat, contiguous f32 CPU tensor, to be reduced in place.
    fn host_floats<'t>(&self, buffer: &'t mut Tensor) -> Result<&'t mut [f32], CollectiveError> {
        check_buffer(buffer, Device::Cpu, self.rank)?;
        let len = buffer.numel();
        if len == 0 {
            return Ok(&mut []);
        }
        // SAFETY: a contiguous f32 CPU tensor of `len` elements owns `len` floats at its
        // data pointer, and `buffer` is borrowed mutably for as long as the slice lives.
        Ok(unsafe { std::slice::from_raw_parts_mut(buffer.data_ptr() as *mut f32, len) })
    }

    /// [`Collective::all_reduce_sum`] on host memory.
    pub fn sum_slice(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let n = self.world;
        if n <= 1 {
            return Ok(());
        }
        let bounds = chunk_bounds(data.len(), n);
        let chunk = |i: usize| bounds[i % n]..bounds[i % n + 1];
        let r = self.rank;
        for step in 0..n - 1 {
            let (send, receive) = (chunk(r + n - step), chunk(r + 2 * n - step - 1));
            self.exchange(&data[send], receive.len(), "all-reduce (reduce-scatter)")?;
            for (x, y) in data[receive].iter_mut().zip(self.received()) {
                *x += y;
            }
        }
        for step in 0..n - 1 {
            let (send, receive) = (chunk(r + 1 + n - step), chunk(r + n - step));
            self.exchange(&data[send], receive.len(), "all-reduce (all-gather)")?;
            for (x, y) in data[receive].iter_mut().zip(self.received()) {
                *x = y;
            }
        }
        Ok(())
    }

    /// [`Collective::broadcast`] on host memory.
    pub fn broadcast_slice(
        &mut self,
        data: &mut [f32],
        root: usize,
    ) -> Result<(), CollectiveError> {
        let n = self.world;
        if n <= 1 {
            return Ok(());
        }
        // Round the ring from the root: each rank receives, then passes it on, until
        // the rank before the root.
        let from_root = (self.rank + n - root) % n;
        let during = "broadcast";
        if from_root > 0 {
            self.received.resize(4 * data.len(), 0);
            let previous = self.previous_rank();
            let prev = self
                .prev
                .as_mut()
                .expect("a ring of two or more has a previous rank");
            let read = prev.read_exact(&mut self.received);
            read.map_err(|e| self.failure(previous, during, e))?;
            for (x, y) in data.iter_mut().zip(self.received()) {
                *x = y;
            }
        }
        if from_root < n - 1 {
            self.sent.clear();
            self.sent.extend(data.iter().flat_map(|x| x.to_ne_bytes()));
            let next_rank = (self.rank + 1) % n;
            let next = self
                .next
                .as_mut()
                .expect("a ring of two or more has a next rank");
            let wrote = next.write_all(&self.sent);
            wrote.map_err(|e| self.failure(next_rank, during, e))?;
        }
        Ok(())
    }
}

/// A ring of `n` ranks in this process over loopback, for benchmarks and tests: rank
/// `r` is the `r`-th ring, each to be driven from its own thread.
pub fn local(n: usize, timeout: Duration) -> Result<Vec<Ring>, CollectiveError> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| listen("127.0.0.1"))
        .collect::<Result<_, _>>()
        .map_err(|e| CollectiveError::Protocol {
            rank: 0,
            message: format!("cannot listen on loopback: {e}"),
        })?;
    let addresses: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound listener has an address"))
        .collect();
    std::thread::scope(|scope| {
        let joining: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, listener)| {
                let addresses = &addresses;
                scope.spawn(move || Ring::join(rank, addresses, listener, timeout))
            })
            .collect();
        joining
            .into_iter()
            .map(|h| h.join().expect("joining does not panic"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gang of `n` ranks, each in its own thread, running `work` on its ring.
    pub(crate) fn gang<T: Send>(
        n: usize,
        timeout: Duration,
        work: impl Fn(Ring) -> T + Sync,
    ) -> Vec<T> {
        let rings = local(n, timeout).unwrap();
        std::thread::scope(|scope| {
            let work = &work;
            let handles: Vec<_> = rings
                .into_iter()
                .map(|ring| scope.spawn(move || work(ring)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Rank `r`'s test vector: element `i` is `r * 1000 + i` (exact in f32 here).
    fn values(rank: usize, len: usize) -> Vec<f32> {
        (0..len).map(|i| (rank * 1000 + i) as f32).collect()
    }

    #[test]
    fn all_reduce_sums_over_any_number_of_ranks_and_lengths() {
        for n in [1, 2, 3, 5] {
            for len in [0, 1, 2, 7, 1_001] {
                let results = gang(n, Duration::from_secs(10), |mut ring| {
                    let mut data = values(ring.rank(), len);
                    ring.sum_slice(&mut data).unwrap();
                    data
                });
                let expected: Vec<f32> = (0..len)
                    .map(|i| (0..n).map(|r| (r * 1000 + i) as f32).sum())
                    .collect();
                for (rank, got) in results.iter().enumerate() {
                    assert_eq!(got, &expected, "{n} ranks, {len} floats, rank {rank}");
                }
            }
        }
    }

    #[test]
    fn broadcast_on_slices_and_tensors() {
        let results = gang(4, Duration::from_secs(10), |mut ring| {
            let mut data = values(ring.rank(), 33);
            ring.broadcast_slice(&mut data, 2).unwrap();
            // The same through the trait, on a tensor.
            let mut tensor = Tensor::from_slice(&values(ring.rank(), 9));
            ring.broadcast(&mut tensor, 1).unwrap();
            ring.all_reduce_sum(&mut tensor).unwrap();
            (data, Vec::<f32>::try_from(&tensor).unwrap())
        });
        let from_one: Vec<f32> = values(1, 9).iter().map(|x| x * 4.0).collect();
        for (data, tensor) in results {
            assert_eq!(data, values(2, 33));
            assert_eq!(tensor, from_one);
        }
    }

    #[test]
    fn a_hung_rank_turns_into_a_timeout_on_the_others() {
        let timeout = Duration::from_millis(500);
        let started = Instant::now();
        let results = gang(3, timeout, |mut ring| {
            if ring.rank() == 1 {
                // Joined, then never takes part: a hung process.
                std::thread::sleep(Duration::from_secs(2));
                return Ok(());
            }
            let mut data = vec![1.0; 100];
            ring.sum_slice(&mut data)
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        for (rank, result) in results.iter().enumerate().filter(|(r, _)| *r != 1) {
            let error = result.as_ref().unwrap_err().to_string();
            assert!(
                error.contains(&format!("rank {rank}:")) && error.contains("all-reduce"),
                "{error}"
            );
        }
        // Rank 2 waits on rank 1 directly: it says so.
        let error = results[2].as_ref().unwrap_err();
        assert!(
            matches!(error, CollectiveError::Timeout { peer, .. } if peer == "rank 1"),
            "{error}"
        );
    }

    #[test]
    fn a_stranger_is_refused_when_joining() {
        let listener = listen("127.0.0.1").unwrap();
        let address = listener.local_addr().unwrap();
        let stranger = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            // Claims to be rank 7 of 9.
            let hello = [7u32, 9].map(u32::to_le_bytes).concat();
            stream.write_all(&hello).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        let nobody = listen("127.0.0.1").unwrap().local_addr().unwrap();
        let joined = Ring::join(0, &[address, nobody], listener, Duration::from_secs(1));
        let error = joined.err().expect("refused").to_string();
        assert!(
            error.contains("expected rank 1 of 2") || error.contains("did not answer"),
            "{error}"
        );
        stranger.join().unwrap();
    }
}
