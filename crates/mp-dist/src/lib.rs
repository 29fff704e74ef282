//! Collectives for data-parallel training.
//!
//! One small trait, [`Communicator`]: the rank and world size, all-reduce, reduce-scatter,
//! all-gather, broadcast and barrier over host slices of `f32`, `f64`, 16-bit words and bytes,
//! plus [`Communicator::start_sum`], the non-blocking sum the gradient reduction starts for
//! each bucket while the backward pass still runs ([`Pending`]). Implementations:
//!
//! - [`Single`]: one process; always there. Every collective is a copy.
//! - `Mpi` (feature `mpi`): MPI through rsmpi on the system's MPI (OpenMPI on Debian), for
//!   `mpirun -np N mp-train train ...`. Nothing here is a home-made transport.
//!
//! [`World`] is the shared handle a run holds. [`Partition`] splits a flat arena into the
//! per-rank shards of ZeRO stage 1: whole [`PART`]-element parts, so that the per-part
//! statistics the gradient check sums are the same whatever the world size.
//!
//! ```
//! use mp_dist::{Communicator, Op, Single};
//! let world = Single;
//! let send = [1.0f32, 2.0];
//! let mut recv = [0.0f32; 2];
//! world.all_reduce((&send[..]).into(), (&mut recv[..]).into(), Op::Sum).unwrap();
//! assert_eq!(recv, send);
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "mpi")]
pub use mpi_comm::Mpi;

/// What went wrong in a collective.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The buffers of a call do not fit each other or the world.
    #[error("{op}: {msg}")]
    Shape {
        /// The collective.
        op: &'static str,
        /// What does not fit.
        msg: String,
    },
    /// The engine refused or failed the call.
    #[error("{engine}: {msg}")]
    Engine {
        /// `"mpi"`, ...
        engine: &'static str,
        /// The engine's message.
        msg: String,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, DistError>;

/// The reduction of a collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Element-wise sum (not defined on 16-bit words, which are bit patterns here).
    Sum,
    /// Element-wise maximum.
    Max,
}

/// A read-only host slice of one element type.
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    /// `f32` values.
    F32(&'a [f32]),
    /// `f64` values.
    F64(&'a [f64]),
    /// 16-bit words (BF16 or F16 bit patterns).
    U16(&'a [u16]),
    /// Bytes.
    U8(&'a [u8]),
}

/// A writable host slice of one element type.
#[derive(Debug)]
pub enum ElemsMut<'a> {
    /// `f32` values.
    F32(&'a mut [f32]),
    /// `f64` values.
    F64(&'a mut [f64]),
    /// 16-bit words.
    U16(&'a mut [u16]),
    /// Bytes.
    U8(&'a mut [u8]),
}

macro_rules! elems_from {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<&'a [$t]> for Elems<'a> {
            fn from(x: &'a [$t]) -> Self { Elems::$v(x) }
        }
        impl<'a> From<&'a mut [$t]> for ElemsMut<'a> {
            fn from(x: &'a mut [$t]) -> Self { ElemsMut::$v(x) }
        }
    )*};
}
elems_from!(f32 => F32, f64 => F64, u16 => U16, u8 => U8);

impl Elems<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(x) => x.len(),
            Elems::F64(x) => x.len(),
            Elems::U16(x) => x.len(),
            Elems::U8(x) => x.len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            Elems::F32(_) => 4,
            Elems::F64(_) => 8,
            Elems::U16(_) => 2,
            Elems::U8(_) => 1,
        }
    }
    /// The element type's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Elems::F32(_) => "f32",
            Elems::F64(_) => "f64",
            Elems::U16(_) => "u16",
            Elems::U8(_) => "u8",
        }
    }
}

impl ElemsMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ElemsMut::F32(x) => x.len(),
            ElemsMut::F64(x) => x.len(),
            ElemsMut::U16(x) => x.len(),
            ElemsMut::U8(x) => x.len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element type's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ElemsMut::F32(_) => "f32",
            ElemsMut::F64(_) => "f64",
            ElemsMut::U16(_) => "u16",
            ElemsMut::U8(_) => "u8",
        }
    }
    /// Copies `src` (same type and length) into this slice.
    fn copy_from(&mut self, op: &'static str, src: Elems<'_>) -> Result<()> {
        match (self, src) {
            (ElemsMut::F32(d), Elems::F32(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (ElemsMut::F64(d), Elems::F64(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (ElemsMut::U16(d), Elems::U16(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (ElemsMut::U8(d), Elems::U8(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (d, s) => {
                return Err(shape(
                    op,
                    format!(
                        "send is {} {}, recv {} {}",
                        s.len(),
                        s.kind(),
                        d.len(),
                        d.kind()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn shape(op: &'static str, msg: impl Into<String>) -> DistError {
    DistError::Shape {
        op,
        msg: msg.into(),
    }
}

/// Checks the buffers of a collective: same element type; `recv.len() == send.len() * ratio`
/// (`ratio` = world size for an all-gather, 1 for an all-reduce) or `send.len() == recv.len() *
/// world` for a reduce-scatter (`ratio` = 0 selects that form); sums are not defined on 16-bit
/// words.
pub fn check_call(
    op: &'static str,
    world: usize,
    send: &Elems<'_>,
    recv: &ElemsMut<'_>,
    reduce: Option<Op>,
    ratio: usize,
) -> Result<()> {
    if send.kind() != recv.kind() {
        return Err(shape(
            op,
            format!("send is {}, recv {}", send.kind(), recv.kind()),
        ));
    }
    if reduce == Some(Op::Sum) && matches!(send, Elems::U16(_)) {
        return Err(shape(
            op,
            "a sum of 16-bit words is not defined (they are BF16/F16 bit patterns)",
        ));
    }
    let ok = if ratio == 0 {
        send.len() == recv.len() * world
    } else {
        recv.len() == send.len() * ratio
    };
    if !ok {
        return Err(shape(
            op,
            format!(
                "send has {} elements and recv {}, in a world of {world}",
                send.len(),
                recv.len()
            ),
        ));
    }
    Ok(())
}

/// The collectives a data-parallel run needs, over host slices. Every rank of the world calls
/// each collective in the same order with buffers of the same lengths.
pub trait Communicator: Send + Sync {
    /// The engine: `"single"`, `"mpi"`.
    fn engine(&self) -> &'static str;
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// `recv = op(send of every rank)`, element-wise; `recv.len() == send.len()`.
    fn all_reduce(&self, send: Elems<'_>, recv: ElemsMut<'_>, op: Op) -> Result<()>;
    /// Starts the sum over ranks of `bufs.send` into `bufs.recv` (resized to its length),
    /// non-blocking where the engine can (MPI: `MPI_Iallreduce`): the collective owns both
    /// buffers until [`Pending::wait`] hands them back. Every rank starts the same sums in the
    /// same order. The default runs a blocking [`Communicator::all_reduce`] here.
    fn start_sum(&self, mut bufs: SumBuffers) -> Result<Box<dyn Pending>> {
        bufs.recv.resize(bufs.send.len(), 0.0);
        self.all_reduce(
            Elems::F32(&bufs.send),
            ElemsMut::F32(&mut bufs.recv),
            Op::Sum,
        )?;
        Ok(Box::new(Finished(bufs)))
    }
    /// `op` over ranks of `send` (`size() * recv.len()` elements), block `rank()` of the result
    /// into `recv`.
    fn reduce_scatter(&self, send: Elems<'_>, recv: ElemsMut<'_>, op: Op) -> Result<()>;
    /// Every rank's `send` concatenated in rank order into `recv` (`size() * send.len()`).
    fn all_gather(&self, send: Elems<'_>, recv: ElemsMut<'_>) -> Result<()>;
    /// `buf` of rank `root` copied into `buf` of every rank.
    fn broadcast(&self, buf: ElemsMut<'_>, root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Seconds a collective may wait for the other ranks before this process ends the whole
    /// job (0: forever). Engines without a watchdog ignore it.
    fn set_timeout(&self, _seconds: u64) {}
    /// Ends every process of the job at once with exit status `code` (after a failure that the
    /// other ranks cannot learn about through a collective).
    fn abort(&self, code: i32) -> !;
}

/// The two host buffers lent to a non-blocking sum ([`Communicator::start_sum`]): `send`
/// holds this rank's values, `recv` gets the sum over ranks. Handed back by
/// [`Pending::wait`] so that a caller can reuse them.
#[derive(Debug, Default)]
pub struct SumBuffers {
    /// This rank's values.
    pub send: Vec<f32>,
    /// The sum over ranks, once finished.
    pub recv: Vec<f32>,
}

/// A non-blocking sum in flight ([`Communicator::start_sum`]). It owns its buffers until
/// [`Pending::wait`] hands them back; dropping it unfinished waits for it, so the engine never
/// writes into freed memory.
pub trait Pending {
    /// True once the sum has finished. Also lets the engine make progress: MPI advances a
    /// non-blocking collective only while the process is inside an MPI call.
    fn test(&mut self) -> Result<bool>;
    /// Waits for the sum and hands the buffers back, `recv` holding it.
    fn wait(self: Box<Self>) -> Result<SumBuffers>;
}

/// A sum that finished when it was started.
struct Finished(SumBuffers);

impl Pending for Finished {
    fn test(&mut self) -> Result<bool> {
        Ok(true)
    }
    fn wait(self: Box<Self>) -> Result<SumBuffers> {
        Ok(self.0)
    }
}

/// One process: rank 0 of a world of 1. Every collective copies `send` into `recv`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Communicator for Single {
    fn engine(&self) -> &'static str {
        "single"
    }
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce(&self, send: Elems<'_>, mut recv: ElemsMut<'_>, op: Op) -> Result<()> {
        check_call("all_reduce", 1, &send, &recv, Some(op), 1)?;
        recv.copy_from("all_reduce", send)
    }
    fn reduce_scatter(&self, send: Elems<'_>, mut recv: ElemsMut<'_>, op: Op) -> Result<()> {
        check_call("reduce_scatter", 1, &send, &recv, Some(op), 0)?;
        recv.copy_from("reduce_scatter", send)
    }
    fn all_gather(&self, send: Elems<'_>, mut recv: ElemsMut<'_>) -> Result<()> {
        check_call("all_gather", 1, &send, &recv, None, 1)?;
        recv.copy_from("all_gather", send)
    }
    fn broadcast(&self, _buf: ElemsMut<'_>, root: usize) -> Result<()> {
        if root != 0 {
            return Err(shape("broadcast", format!("root {root} in a world of 1")));
        }
        Ok(())
    }
    fn start_sum(&self, mut bufs: SumBuffers) -> Result<Box<dyn Pending>> {
        // one rank: the sum is its own values
        std::mem::swap(&mut bufs.send, &mut bufs.recv);
        bufs.send.clear();
        bufs.send.extend_from_slice(&bufs.recv);
        Ok(Box::new(Finished(bufs)))
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The world a run belongs to: a shared [`Communicator`] (one process by default).
#[derive(Clone)]
pub struct World(Arc<dyn Communicator>);

impl World {
    /// The world of `comm`.
    pub fn new(comm: impl Communicator + 'static) -> Self {
        World(Arc::new(comm))
    }
    /// One process.
    pub fn single() -> Self {
        World::new(Single)
    }
    /// The world this process was started in: MPI's when built with the `mpi` feature and
    /// launched by an MPI launcher, one process when not launched by one. Launched by
    /// `mpirun` without the feature is an error (the ranks would each run alone, all into
    /// the same run folder).
    pub fn from_environment() -> std::result::Result<World, String> {
        match launcher() {
            None => Ok(World::single()),
            Some((var, size)) => {
                #[cfg(feature = "mpi")]
                {
                    let _ = (var, size);
                    Mpi::initialize().map(World::new)
                }
                #[cfg(not(feature = "mpi"))]
                {
                    if size == "1" {
                        return Ok(World::single());
                    }
                    Err(format!(
                        "started by an MPI launcher ({var}={size}) but this binary was built \
                         without MPI: build it with `cargo build --release -p mp-train \
                         --features mpi`"
                    ))
                }
            }
        }
    }
    /// The communicator.
    pub fn comm(&self) -> &dyn Communicator {
        &*self.0
    }
    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.0.rank()
    }
    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.0.size()
    }
    /// True on rank 0, the rank that writes the run's files.
    pub fn is_lead(&self) -> bool {
        self.0.rank() == 0
    }
}

impl Default for World {
    fn default() -> Self {
        World::single()
    }
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "World({} rank {} of {})",
            self.0.engine(),
            self.0.rank(),
            self.0.size()
        )
    }
}

/// The environment variable and world size an MPI launcher set for this process (OpenMPI's
/// `OMPI_COMM_WORLD_SIZE`, MPICH/Hydra's `PMI_SIZE`), if one started it.
pub fn launcher() -> Option<(&'static str, String)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().map(|s| (v, s)))
}

/// This process's rank among the ranks of its machine, as the MPI launcher set it
/// (OpenMPI's `OMPI_COMM_WORLD_LOCAL_RANK`, MPICH/Hydra's `MPI_LOCALRANKID`, Slurm's
/// `SLURM_LOCALID`): the GPU a data-parallel rank takes. `None` when not launched so.
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .into_iter()
    .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Elements per part of a flat arena: the unit of ZeRO shards and of the gradient check's
/// partial sums (16384 elements, 64 KiB of FP32).
pub const PART: usize = 1 << 14;

/// A flat arena of `len` elements split into `world` shards of whole [`PART`]s. Every shard
/// but the last ones has [`Partition::shard_len`] elements (a multiple of `PART`); the shards
/// at the end may be shorter or empty. Collectives work on the padded length
/// `world * shard_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Elements of the arena.
    pub len: usize,
    /// Number of shards.
    pub world: usize,
    /// Elements of a full shard (a multiple of [`PART`]).
    pub shard_len: usize,
}

impl Partition {
    /// The partition of `len` elements over `world` ranks (`world >= 1`).
    pub fn new(len: usize, world: usize) -> Self {
        let world = world.max(1);
        let parts = len.div_ceil(PART);
        Partition {
            len,
            world,
            shard_len: parts.div_ceil(world) * PART,
        }
    }
    /// The elements rank `rank` owns.
    pub fn range(&self, rank: usize) -> Range<usize> {
        let start = (rank * self.shard_len).min(self.len);
        start..((rank + 1) * self.shard_len).min(self.len)
    }
    /// `world * shard_len`: the length of the padded buffers collectives use.
    pub fn padded_len(&self) -> usize {
        self.world * self.shard_len
    }
    /// Number of parts of the arena.
    pub fn parts(&self) -> usize {
        self.len.div_ceil(PART)
    }
    /// The parts rank `rank` owns.
    pub fn part_range(&self, rank: usize) -> Range<usize> {
        let r = self.range(rank);
        r.start / PART..r.end.div_ceil(PART)
    }
}

/// Buckets of at most `bucket_elems` elements (at least 1) over `0..len` in the order a
/// backward pass produces gradients: from the end of the arena to its start (the last
/// layers' parameters come last in the layout and first out of backward), with the first
/// bucket smaller (`first_elems`), as PyTorch DDP's first bucket is, so that communication
/// starts early.
pub fn reverse_buckets(len: usize, bucket_elems: usize, first_elems: usize) -> Vec<Range<usize>> {
    let (bucket, first) = (
        bucket_elems.max(1),
        first_elems.max(1).min(bucket_elems.max(1)),
    );
    let mut out = Vec::new();
    let mut end = len;
    let mut size = first;
    while end > 0 {
        let start = end.saturating_sub(size);
        out.push(start..end);
        end = start;
        size = bucket;
    }
    out
}

/// Bytes this rank sends for one collective of `payload` bytes in a world of `world`, as a
/// ring algorithm sends them (the engine may choose another algorithm; this is the model the
/// traffic figures use): all-reduce `2 (w-1)/w`, reduce-scatter and all-gather `(w-1)/w` of
/// the full buffer.
pub fn ring_bytes(kind: Collective, payload: u64, world: usize) -> u64 {
    let w = world.max(1) as u64;
    match kind {
        Collective::AllReduce => 2 * payload * (w - 1) / w,
        Collective::ReduceScatter | Collective::AllGather => payload * (w - 1) / w,
    }
}

/// The collectives [`ring_bytes`] models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collective {
    /// All-reduce of the whole buffer.
    AllReduce,
    /// Reduce-scatter of the whole (padded) buffer.
    ReduceScatter,
    /// All-gather into the whole (padded) buffer.
    AllGather,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_covers_the_arena_in_whole_parts() {
        for (len, world) in [
            (1, 1),
            (100_000, 2),
            (3 * PART, 4),
            (5 * PART + 7, 3),
            (0, 2),
        ] {
            let p = Partition::new(len, world);
            assert_eq!(p.shard_len % PART, 0);
            let mut next = 0;
            for r in 0..world {
                let range = p.range(r);
                assert_eq!(range.start, next, "len {len} world {world} rank {r}");
                assert!(range.len() <= p.shard_len);
                assert_eq!(range.start % PART, 0);
                next = range.end;
            }
            assert_eq!(next, len);
            assert!(p.padded_len() >= len);
            let parts: usize = (0..world).map(|r| p.part_range(r).len()).sum();
            assert_eq!(parts, p.parts());
        }
    }

    #[test]
    fn buckets_run_backwards_with_a_small_first_one() {
        let b = reverse_buckets(10, 4, 1);
        assert_eq!(b, vec![9..10, 5..9, 1..5, 0..1]);
        assert!(reverse_buckets(0, 4, 1).is_empty());
        assert_eq!(reverse_buckets(3, 8, 8), vec![0..3]);
    }

    #[test]
    fn single_copies_and_checks_shapes() {
        let w = Single;
        let send = [1.0f64, 2.0];
        let mut recv = [0.0f64; 2];
        w.all_reduce((&send[..]).into(), (&mut recv[..]).into(), Op::Max)
            .unwrap();
        assert_eq!(recv, send);
        let mut short = [0.0f64; 1];
        let e = w
            .all_gather((&send[..]).into(), (&mut short[..]).into())
            .unwrap_err();
        assert!(
            e.to_string().contains("send has 2 elements and recv 1"),
            "{e}"
        );
        let words = [1u16, 2];
        let mut out = [0u16; 2];
        let e = w
            .all_reduce((&words[..]).into(), (&mut out[..]).into(), Op::Sum)
            .unwrap_err();
        assert!(e.to_string().contains("16-bit"), "{e}");
        let mut wrong = [0.0f32; 2];
        let e = w
            .all_reduce((&send[..]).into(), (&mut wrong[..]).into(), Op::Sum)
            .unwrap_err();
        assert!(e.to_string().contains("send is f64, recv f32"), "{e}");
        let send = vec![1.0f32, -2.5, 3.0];
        let bufs = SumBuffers {
            send: send.clone(),
            recv: Vec::new(),
        };
        let mut p = w.start_sum(bufs).unwrap();
        assert!(p.test().unwrap());
        let back = p.wait().unwrap();
        assert_eq!((back.send, back.recv), (send.clone(), send));
    }

    #[test]
    fn ring_traffic_model() {
        assert_eq!(ring_bytes(Collective::AllReduce, 1000, 1), 0);
        assert_eq!(ring_bytes(Collective::AllReduce, 1000, 2), 1000);
        assert_eq!(ring_bytes(Collective::AllGather, 1000, 4), 750);
    }
}
