//! [`Mpi`]: the communicator over MPI's world (rsmpi on the system's MPI).
//!
//! MPI is initialised with `MPI_THREAD_MULTIPLE` where the library provides it (the watchdog
//! thread may then end the job with `MPI_Abort`); every call from this type is serialised by
//! a mutex, so `MPI_THREAD_SERIALIZED` is enough for the collectives themselves.
//!
//! **Watchdog.** A thread watches the collective in flight: one that has waited longer than
//! [`Communicator::set_timeout`]'s seconds for the other ranks (a rank died, hangs, or failed
//! without telling the others) prints which collective it was and ends the whole job
//! (`MPI_Abort`, exit status 124). MPI's own default error handler (`MPI_ERRORS_ARE_FATAL`)
//! ends the job on an engine error, and `mpirun` ends it when a rank exits without
//! finalising (killed, crashed).

use crate::{Communicator, DistError, Elems, ElemsMut, Op, Result, SumBuffers, check_call};
use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::ffi;
use mpi::raw::AsRaw as _;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _, Root as _};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names of the collectives, for the watchdog's message.
const OPS: [&str; 7] = [
    "",
    "all_reduce",
    "all_reduce (a gradient bucket)",
    "reduce_scatter",
    "all_gather",
    "broadcast",
    "barrier",
];

/// What the watchdog sees: the collective in flight and since when.
struct Watch {
    origin: Instant,
    /// Milliseconds since `origin` at which the collective in flight started (0: none).
    since_ms: AtomicU64,
    op: AtomicUsize,
    timeout_ms: AtomicU64,
    multiple: AtomicBool,
    rank: usize,
}

impl Watch {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    fn run(self: Arc<Self>) {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let (since, timeout) = (
                self.since_ms.load(Ordering::Acquire),
                self.timeout_ms.load(Ordering::Relaxed),
            );
            if since == 0 || timeout == 0 || self.now_ms().saturating_sub(since) <= timeout {
                continue;
            }
            let op = OPS[self.op.load(Ordering::Relaxed).min(OPS.len() - 1)];
            eprintln!(
                "error: rank {}: {op} waited more than {} s for the other ranks \
                 (distributed.timeout_s): a rank has stopped or hangs; ending the job",
                self.rank,
                timeout / 1000
            );
            if self.multiple.load(Ordering::Relaxed) {
                // SAFETY: MPI provides MPI_THREAD_MULTIPLE, so any thread may call MPI_Abort.
                unsafe {
                    mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 124);
                }
            }
            std::process::exit(124);
        }
    }
}

/// Marks a collective in flight for the watchdog until dropped.
struct InFlight<'a>(&'a Watch);

impl<'a> InFlight<'a> {
    fn new(w: &'a Watch, op: usize) -> Self {
        w.op.store(op, Ordering::Relaxed);
        w.since_ms.store(w.now_ms(), Ordering::Release);
        InFlight(w)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.since_ms.store(0, Ordering::Release);
    }
}

struct Inner {
    world: SimpleCommunicator,
    // finalises MPI when the communicator is dropped (after `world`)
    _universe: Universe,
}

/// MPI's world communicator. Created once per process by [`Mpi::initialize`]; MPI is
/// finalised when it is dropped (and no sum it started is still in flight).
pub struct Mpi {
    shared: Arc<Shared>,
    rank: usize,
    size: usize,
}

/// What every MPI call goes through: the communicator behind its mutex, and the watchdog's
/// view. Shared with the non-blocking sums in flight.
struct Shared {
    inner: Mutex<Inner>,
    watch: Arc<Watch>,
}

// SAFETY: every MPI call goes through `inner`'s mutex (MPI_THREAD_SERIALIZED or better is
// required at initialisation), and the handles are plain MPI handles valid in any thread.
unsafe impl Send for Shared {}
// SAFETY: as above: shared access only reaches MPI through the mutex.
unsafe impl Sync for Shared {}

impl Shared {
    fn with<R>(&self, op: usize, f: impl FnOnce(&SimpleCommunicator) -> R) -> R {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _flight = InFlight::new(&self.watch, op);
        f(&inner.world)
    }
}

impl Mpi {
    /// Initialises MPI (once per process) and returns its world.
    pub fn initialize() -> std::result::Result<Mpi, String> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or("MPI is already initialised in this process")?;
        if provided < Threading::Serialized {
            return Err(format!(
                "the MPI library provides {provided:?} threading; MPI_THREAD_SERIALIZED or \
                 better is needed"
            ));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let watch = Arc::new(Watch {
            origin: Instant::now(),
            since_ms: AtomicU64::new(0),
            op: AtomicUsize::new(0),
            timeout_ms: AtomicU64::new(0),
            multiple: AtomicBool::new(provided == Threading::Multiple),
            rank,
        });
        let w = Arc::clone(&watch);
        std::thread::Builder::new()
            .name("mpi-watchdog".into())
            .spawn(move || w.run())
            .map_err(|e| format!("starting the MPI watchdog thread: {e}"))?;
        Ok(Mpi {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    world,
                    _universe: universe,
                }),
                watch,
            }),
            rank,
            size,
        })
    }

    fn with<R>(&self, op: usize, f: impl FnOnce(&SimpleCommunicator) -> R) -> R {
        self.shared.with(op, f)
    }
}

/// `MPI_REQUEST_NULL`: what a finished request becomes.
fn request_null() -> ffi::MPI_Request {
    // SAFETY: an immutable constant of the MPI library, set before `main`.
    unsafe { ffi::RSMPI_REQUEST_NULL }
}

/// An MPI return code as a result.
fn engine_rc(call: &str, rc: i32) -> Result<()> {
    if rc == ffi::MPI_SUCCESS as i32 {
        return Ok(());
    }
    Err(DistError::Engine {
        engine: "mpi",
        msg: format!("{call} returned error code {rc}"),
    })
}

/// A non-blocking sum in flight: the MPI request and the buffers it reads and writes.
struct MpiSum {
    shared: Arc<Shared>,
    request: ffi::MPI_Request,
    /// `None` once handed back.
    bufs: Option<SumBuffers>,
}

impl MpiSum {
    fn finish(&mut self) -> Result<()> {
        if self.request == request_null() {
            return Ok(());
        }
        let rc = self.shared.with(2, |_| {
            // SAFETY: `request` is this collective's active request; MPI sets it to
            // MPI_REQUEST_NULL when it completes.
            unsafe { ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE) }
        });
        engine_rc("MPI_Wait", rc)
    }
}

impl crate::Pending for MpiSum {
    fn test(&mut self) -> Result<bool> {
        if self.request == request_null() {
            return Ok(true);
        }
        let mut flag = 0;
        let rc = self.shared.with(2, |_| {
            // SAFETY: as in `finish`; `flag` is a valid int to write.
            unsafe { ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE) }
        });
        engine_rc("MPI_Test", rc)?;
        Ok(flag != 0)
    }
    fn wait(mut self: Box<Self>) -> Result<SumBuffers> {
        self.finish()?;
        Ok(self.bufs.take().unwrap_or_default())
    }
}

impl Drop for MpiSum {
    fn drop(&mut self) {
        // the buffers must outlive MPI's use of them: an unfinished sum is waited for (an
        // engine error here is fatal under MPI's default error handler anyway)
        let _ = self.finish();
    }
}

fn system_op(op: Op) -> SystemOperation {
    match op {
        Op::Sum => SystemOperation::sum(),
        Op::Max => SystemOperation::max(),
    }
}

/// Runs `$body` with `$s` and `$r` bound to the typed slices of a send/recv pair of one type
/// (checked to match before).
macro_rules! typed {
    ($send:expr, $recv:expr, |$s:ident, $r:ident| $body:expr) => {
        match ($send, $recv) {
            (Elems::F32($s), ElemsMut::F32($r)) => $body,
            (Elems::F64($s), ElemsMut::F64($r)) => $body,
            (Elems::U16($s), ElemsMut::U16($r)) => $body,
            (Elems::U8($s), ElemsMut::U8($r)) => $body,
            _ => unreachable!("element types were checked to match"),
        }
    };
}

impl Communicator for Mpi {
    fn engine(&self) -> &'static str {
        "mpi"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce(&self, send: Elems<'_>, recv: ElemsMut<'_>, op: Op) -> Result<()> {
        check_call("all_reduce", self.size, &send, &recv, Some(op), 1)?;
        self.with(1, |w| {
            typed!(send, recv, |s, r| w.all_reduce_into(s, r, system_op(op)))
        });
        Ok(())
    }
    fn start_sum(&self, mut bufs: SumBuffers) -> Result<Box<dyn crate::Pending>> {
        bufs.recv.resize(bufs.send.len(), 0.0);
        let count = i32::try_from(bufs.send.len()).map_err(|_| {
            crate::shape(
                "start_sum",
                format!("{} elements: more than MPI's count", bufs.send.len()),
            )
        })?;
        let mut request = request_null();
        let rc = self.with(2, |w| {
            // SAFETY: both buffers live in the returned value until MPI has finished with them
            // (its `wait`, or its drop, which waits); their heap storage does not move when
            // the vectors do; the datatype and count describe them.
            unsafe {
                ffi::MPI_Iallreduce(
                    bufs.send.as_ptr().cast(),
                    bufs.recv.as_mut_ptr().cast(),
                    count,
                    ffi::RSMPI_FLOAT,
                    ffi::RSMPI_SUM,
                    w.as_raw(),
                    &mut request,
                )
            }
        });
        engine_rc("MPI_Iallreduce", rc)?;
        Ok(Box::new(MpiSum {
            shared: Arc::clone(&self.shared),
            request,
            bufs: Some(bufs),
        }))
    }
    fn reduce_scatter(&self, send: Elems<'_>, recv: ElemsMut<'_>, op: Op) -> Result<()> {
        check_call("reduce_scatter", self.size, &send, &recv, Some(op), 0)?;
        self.with(3, |w| {
            typed!(send, recv, |s, r| w.reduce_scatter_block_into(
                s,
                r,
                system_op(op)
            ))
        });
        Ok(())
    }
    fn all_gather(&self, send: Elems<'_>, recv: ElemsMut<'_>) -> Result<()> {
        check_call("all_gather", self.size, &send, &recv, None, self.size)?;
        self.with(4, |w| typed!(send, recv, |s, r| w.all_gather_into(s, r)));
        Ok(())
    }
    fn broadcast(&self, buf: ElemsMut<'_>, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(crate::shape(
                "broadcast",
                format!("root {root} in a world of {}", self.size),
            ));
        }
        self.with(5, |w| {
            let p = w.process_at_rank(root as i32);
            match buf {
                ElemsMut::F32(b) => p.broadcast_into(b),
                ElemsMut::F64(b) => p.broadcast_into(b),
                ElemsMut::U16(b) => p.broadcast_into(b),
                ElemsMut::U8(b) => p.broadcast_into(b),
            }
        });
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.with(6, |w| w.barrier());
        Ok(())
    }
    fn set_timeout(&self, seconds: u64) {
        self.shared
            .watch
            .timeout_ms
            .store(seconds.saturating_mul(1000), Ordering::Relaxed);
    }
    fn abort(&self, code: i32) -> ! {
        // SAFETY: MPI is initialised (this value exists) and not finalised (it is not dropped).
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }
}
