//! Data-parallel training over a [`World`] (`mpirun -np N mp-train train ...`, a binary built
//! with `--features mpi`): what each rank of a step does and how the ranks agree.
//!
//! ```text
//! every rank: its micro-batches of the global step, forward + backward (as one process would)
//! agree: any rank failed? (its message goes to rank 0) any rank asked to stop?
//! DDP (zero_stage 0):  during the last micro-batch's backward, each bucket of the gradient
//!                      arena (FP32, from the arena's end) summed over ranks as soon as it is
//!                      final (non-blocking); waited for when the backward pass ends
//! ZeRO-1 (stage 1):    after it, a reduce-scatter: each rank gets the sum of its shard
//! gradient check:      per-part statistics of the rank's range, summed across ranks in part order
//! AdamW:               over the rank's range (stage 0: all of it) with the same grad_mult
//! ZeRO-1:              all-gather the updated weights; the model copy re-rounded locally
//! ```
//!
//! **Bit-identical to one process.** The global step has `grad_accum_steps x world`
//! micro-batches; rank `r` takes micro-batches `r*A .. (r+1)*A` of it (`A` =
//! `grad_accum_steps`), and each micro-batch's data depends on its global index alone. One
//! process accumulating micro-batches adds each micro-batch's gradient, computed into a zeroed
//! buffer, to the sum (as PyTorch's `.grad +=`), so that with two ranks and one micro-batch
//! each the all-reduce computes exactly the same sums (`a + b == b + a`). The gradient check
//! adds per-part (`mp_dist::PART` elements) partial sums in part order whatever the world size
//! or stage, so the norm, the clip factor and the skip decision are the same bits too.
//!
//! **What ZeRO-1 shards.** The AdamW moments (8 bytes a parameter) exist only for the rank's
//! shard, and the update runs only there. Every rank keeps the whole FP32 master arena,
//! because the forward pass reads it (autocast's FP32 ops, the norms and embeddings, take the
//! FP32 weights, as PyTorch AMP does); so the all-gather moves the master arena in its own
//! dtype (FP32, or BF16 for the pure-BF16 mode) and each rank re-rounds its model copy.
//!
//! The collectives read the arenas in place: they need a backend whose buffers are host
//! memory (the CPU). A checkpoint holds the whole optimizer state (the shards gathered), so a
//! run resumes with any world size.

use crate::config::Distributed;
use crate::error::{Result, TrainError};
use mp_autograd::{GradHook, HookResult};
use mp_dist::{
    Collective, Elems, ElemsMut, Op, PART, Partition, Pending, SumBuffers, World, ring_bytes,
};
use mp_kernels::{
    Backend, BufferExt, DeviceBuffer, DeviceComm, GradStats, Rounding, View, ViewMut,
};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The backend's own collectives (NCCL on CUDA), shared with the bucket reducer.
type Device<B> = Arc<dyn DeviceComm<<B as mp_kernels::MemoryOps>::Buffer>>;

/// The data-parallel side of a trainer on backend `B`: the world, the stage, the staging
/// buffers, and the backend's own collectives when its arenas are device memory.
pub struct DataParallel<B: Backend> {
    world: World,
    /// NCCL (or another device engine) for the arenas; `None`: the host engine reads them.
    device: Option<Device<B>>,
    zero_stage: u8,
    part: Partition,
    bucket_elems: usize,
    first_bucket_elems: usize,
    send: Vec<f32>,
    recv: Vec<f32>,
    /// Staging buffers of the bucket sums, kept from step to step.
    pool: Vec<SumBuffers>,
    sent: AtomicU64,
    /// Gradient buckets reduced so far, and how many of them had finished before their
    /// backward pass ended.
    buckets: (u64, u64),
}

impl<B: Backend> std::fmt::Debug for DataParallel<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("world", &self.world)
            .field("device", &self.device.as_ref().map(|d| d.engine()))
            .field("zero_stage", &self.zero_stage)
            .field("part", &self.part)
            .finish_non_exhaustive()
    }
}

/// `bytes` MiB in f32 elements (at least 1).
fn mib_elems(mib: f64) -> usize {
    ((mib * 1024.0 * 1024.0 / 4.0) as usize).max(1)
}

impl<B: Backend> DataParallel<B> {
    /// The data-parallel state of an arena of `len` elements in `world` under `cfg` (the
    /// host engine's; [`DataParallel::connect`] opens the backend's own where needed).
    pub fn new(world: World, cfg: &Distributed, len: usize) -> Self {
        world.comm().set_timeout(cfg.timeout_s);
        DataParallel {
            part: Partition::new(len, world.size()),
            world,
            device: None,
            zero_stage: cfg.zero_stage,
            bucket_elems: mib_elems(cfg.bucket_mb),
            first_bucket_elems: mib_elems(1.0),
            send: Vec::new(),
            recv: Vec::new(),
            pool: Vec::new(),
            sent: AtomicU64::new(0),
            buckets: (0, 0),
        }
    }

    /// The world.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.world.size()
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.world.rank()
    }

    /// True on rank 0, which alone writes the run's files.
    pub fn is_lead(&self) -> bool {
        self.world.is_lead()
    }

    /// The ZeRO stage (0: DDP).
    pub fn zero_stage(&self) -> u8 {
        self.zero_stage
    }

    /// True when the step runs collectives: more than one rank, or the device's own engine
    /// asked for in a world of one (`distributed.engine = "nccl"`).
    pub fn active(&self) -> bool {
        self.size() > 1 || self.device.is_some()
    }

    /// The engine that reduces the arenas: `"nccl"`, `"mpi"`, `"single"`.
    pub fn engine(&self) -> &'static str {
        match &self.device {
            Some(d) => d.engine(),
            None => self.world.comm().engine(),
        }
    }

    /// True when the optimizer state is split between ranks (ZeRO-1 with collectives).
    pub fn sharded(&self) -> bool {
        self.zero_stage == 1 && self.active()
    }

    /// The elements of the arena whose optimizer state this rank holds and updates: all of
    /// it under DDP, the rank's shard under ZeRO-1.
    pub fn owned(&self) -> Range<usize> {
        if self.zero_stage == 1 {
            self.part.range(self.rank())
        } else {
            0..self.part.len
        }
    }

    /// Bytes this rank has sent in collectives so far, as a ring algorithm sends them
    /// ([`mp_dist::ring_bytes`]).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// DDP's gradient buckets reduced so far, and how many of them had finished while the
    /// backward pass still ran (communication hidden behind computation).
    pub fn buckets(&self) -> (u64, u64) {
        self.buckets
    }

    fn count(&self, kind: Collective, payload: usize) {
        self.sent.fetch_add(
            ring_bytes(kind, payload as u64, self.size()),
            Ordering::Relaxed,
        );
    }

    /// Makes the arenas ready for collectives: FP32 gradients, and either host memory (the
    /// host engine reads them in place) or the backend's own collectives, opened here on
    /// every rank with rank 0's rendezvous id (sent over the host engine). `force_device`
    /// opens them even in a world of one (`distributed.engine = "nccl"`). A collective call:
    /// every rank makes it, and a failure on any rank is an error on all.
    pub fn connect(&mut self, be: &B, grads: &B::Buffer, force_device: bool) -> Result<()> {
        if self.size() == 1 && !force_device {
            return Ok(());
        }
        if grads.dtype() != mp_dtype::DType::F32 {
            return Err(TrainError::invalid(
                "grad_dtype",
                grads.dtype(),
                "a data-parallel run reduces FP32 gradients: use grad_dtype = \"fp32\"",
            ));
        }
        if be.host_bytes(grads.view()).is_some() && !force_device {
            return Ok(());
        }
        let none = || {
            if force_device {
                TrainError::invalid(
                    "distributed.engine",
                    "nccl",
                    format!(
                        "the {} backend has no collectives of its own: NCCL needs the cuda \
                         backend in a binary built with --features nccl",
                        be.name()
                    ),
                )
            } else {
                no_host(be)
            }
        };
        let id = if self.is_lead() {
            be.device_comm_id()
                .map_err(TrainError::from)
                .and_then(|id| id.ok_or_else(none))
        } else {
            Ok(Vec::new())
        };
        let (id, _) = self.agree(id, false)?;
        let id = broadcast_bytes(&self.world, 0, &id)?;
        let opened = be
            .device_comm(&id, self.rank(), self.size())
            .map_err(TrainError::from)
            .and_then(|d| d.ok_or_else(none));
        let (device, _) = self.agree(opened, false)?;
        self.device = Some(Arc::from(device));
        Ok(())
    }

    /// DDP with more than one rank: the reducer of this step's gradients, whose
    /// [`BucketReducer::hook`] the last micro-batch's backward pass is given. When `poison`
    /// (the `poison_grad_steps` testing hook), the first gradient element is made `+inf`
    /// once the backward pass is done with it, before it is sent. Every rank must
    /// [`DataParallel::finish_reducer`] it, even after a failure, so that all ranks run the
    /// same collectives.
    pub fn reducer(&mut self, poison: bool) -> Option<BucketReducer<B>> {
        if self.zero_stage != 0 || !self.active() {
            return None;
        }
        let buckets =
            mp_dist::reverse_buckets(self.part.len, self.bucket_elems, self.first_bucket_elems);
        Some(BucketReducer {
            world: self.world.clone(),
            device: self.device.clone(),
            ready: vec![0; buckets.len()],
            buckets,
            next: 0,
            pending: VecDeque::new(),
            hidden: 0,
            pool: std::mem::take(&mut self.pool),
            poison,
        })
    }

    /// Starts the buckets `reducer` has not started (their values are only right when the
    /// backward pass ran to its end), waits for every bucket and writes the sums into
    /// `grads`, the step's gradient arena.
    pub fn finish_reducer(
        &mut self,
        mut reducer: BucketReducer<B>,
        be: &B,
        grads: &mut B::Buffer,
    ) -> Result<()> {
        // the sums the backward pass's progress calls already saw finished
        let early = reducer.hidden as u64;
        let out = reducer.finish(be, grads);
        self.pool = std::mem::take(&mut reducer.pool);
        self.buckets.0 += reducer.buckets.len() as u64;
        self.buckets.1 += early;
        self.count(Collective::AllReduce, self.part.len * 4);
        out
    }

    /// ZeRO-1's gradient reduction after the backward pass: a reduce-scatter of the arena,
    /// each rank getting the sum of its shard (the rest of the arena keeps this rank's own
    /// gradients). Nothing under DDP, whose [`BucketReducer`] ran during the backward pass.
    pub fn reduce_grads(&mut self, be: &B, grads: &mut B::Buffer) -> Result<()> {
        if !self.sharded() {
            return Ok(());
        }
        let padded = self.part.padded_len();
        let r = self.owned();
        if let Some(dev) = &self.device {
            // in place in a padded copy: each rank's block of the sum lands in its block
            let n = self.part.len;
            let mut tmp = be.zeros(mp_dtype::DType::F32, padded)?;
            be.cast(grads.view(), tmp.slice_mut(0, n), Rounding::NearestEven)?;
            dev.reduce_scatter_sum(tmp.view_mut())?;
            dev.join()?;
            be.cast(
                tmp.slice(r.start, r.len()),
                grads.slice_mut(r.start, r.len()),
                Rounding::NearestEven,
            )?;
        } else {
            let g = host_f32_mut(be, grads.view_mut())?;
            self.send.clear();
            self.send.extend_from_slice(g);
            self.send.resize(padded, 0.0);
            self.recv.resize(self.part.shard_len, 0.0);
            self.world.comm().reduce_scatter(
                Elems::F32(&self.send),
                ElemsMut::F32(&mut self.recv),
                Op::Sum,
            )?;
            g[r.clone()].copy_from_slice(&self.recv[..r.len()]);
        }
        self.count(Collective::ReduceScatter, padded * 4);
        Ok(())
    }

    /// The gradient check's statistics of the summed gradients times `grad_mult`: per-part
    /// ([`PART`]) statistics of the rank's range, combined across ranks, added in part
    /// order. The same bits for every world size and stage.
    pub fn grad_stats(&self, be: &B, grads: &B::Buffer, grad_mult: f32) -> Result<GradStats> {
        let mine = if self.sharded() {
            self.owned()
        } else {
            0..self.part.len
        };
        let parts = be.grad_stats_parts(grads.slice(mine.start, mine.len()), grad_mult, PART)?;
        let (sums, flags): (Vec<f64>, Vec<f64>) = if self.sharded() {
            // every part has one owner: the others contribute exact zeros
            let total = self.part.parts();
            let first = mine.start / PART;
            let mut send = vec![0.0f64; 2 * total];
            for (i, p) in parts.iter().enumerate() {
                send[first + i] = p.sum_sq;
                send[total + first + i] = f64::from(u8::from(p.non_finite));
            }
            let mut all = vec![0.0f64; 2 * total];
            self.world
                .comm()
                .all_reduce(Elems::F64(&send), ElemsMut::F64(&mut all), Op::Sum)?;
            self.count(Collective::AllReduce, 2 * total * 8);
            let flags = all.split_off(total);
            (all, flags)
        } else {
            parts
                .iter()
                .map(|p| (p.sum_sq, f64::from(u8::from(p.non_finite))))
                .unzip()
        };
        let mut out = GradStats::default();
        for (s, f) in sums.iter().zip(&flags) {
            out.non_finite |= *f != 0.0;
            if *f == 0.0 {
                out.sum_sq += s;
            }
        }
        Ok(out)
    }

    /// The sum over ranks of each rank's `loss` (each already weighted by `1 / (A x world)`).
    pub fn sum_loss(&self, loss: f32) -> Result<f32> {
        if self.size() == 1 {
            return Ok(loss);
        }
        let mut out = [0.0f32];
        self.world
            .comm()
            .all_reduce(Elems::F32(&[loss]), ElemsMut::F32(&mut out), Op::Sum)?;
        Ok(out[0])
    }

    /// ZeRO-1 after the update: every rank's shard of `params` gathered into every rank's
    /// arena (in the arena's dtype), and the model copy outside this rank's shard re-rounded
    /// from it (to nearest even, as the optimizer rounds it). Nothing under DDP.
    pub fn gather_weights(
        &mut self,
        be: &B,
        params: &mut B::Buffer,
        copy: Option<&mut B::Buffer>,
    ) -> Result<()> {
        if !self.sharded() {
            return Ok(());
        }
        let dtype = params.dtype();
        let size = dtype.size_in_bytes();
        let (r, n) = (self.owned(), self.part.len);
        let padded = self.part.padded_len();
        if let Some(dev) = &self.device {
            // in place in a padded buffer: each rank's block is its shard
            let mut all = be.zeros(dtype, padded)?;
            be.cast(
                params.slice(r.start, r.len()),
                all.slice_mut(r.start, r.len()),
                Rounding::NearestEven,
            )?;
            dev.all_gather(all.view_mut())?;
            dev.join()?;
            be.cast(all.slice(0, n), params.view_mut(), Rounding::NearestEven)?;
        } else {
            let shard = self.part.shard_len * size;
            let bytes = be
                .host_bytes_mut(params.view_mut())
                .ok_or_else(|| no_host(be))?;
            let mut send = vec![0u8; shard];
            send[..r.len() * size].copy_from_slice(&bytes[r.start * size..r.end * size]);
            let mut all = vec![0u8; padded * size];
            self.world
                .comm()
                .all_gather(Elems::U8(&send), ElemsMut::U8(&mut all))?;
            bytes.copy_from_slice(&all[..n * size]);
        }
        self.count(Collective::AllGather, padded * size);
        if let Some(copy) = copy {
            for (start, end) in [(0, r.start), (r.end, n)] {
                if end > start {
                    be.cast(
                        params.slice(start, end - start),
                        copy.slice_mut(start, end - start),
                        Rounding::NearestEven,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The whole arena from every rank's owned part `shard` (ZeRO-1: an all-gather); under
    /// DDP `shard` is already the whole arena.
    pub fn gather_f32(&self, shard: &[f32]) -> Result<Vec<f32>> {
        if !self.sharded() {
            return Ok(shard.to_vec());
        }
        let mut send = shard.to_vec();
        send.resize(self.part.shard_len, 0.0);
        let mut all = vec![0.0f32; self.part.padded_len()];
        self.world
            .comm()
            .all_gather(Elems::F32(&send), ElemsMut::F32(&mut all))?;
        all.truncate(self.part.len);
        Ok(all)
    }

    /// The ranks agree on how the last phase went: when any rank's `local` failed, every
    /// rank returns an error: the failing rank (the lowest, if several) its own, the others
    /// [`TrainError::RankFailed`] with its message (rank 0 prints it). Otherwise every rank
    /// gets its value and whether any rank asked to `stop`.
    pub fn agree<T>(&self, local: Result<T>, stop: bool) -> Result<(T, bool)> {
        let w = self.size();
        if w == 1 {
            return local.map(|v| (v, stop));
        }
        let rank = self.rank();
        let mine = [
            if local.is_err() {
                (w - rank) as f64
            } else {
                0.0
            },
            f64::from(u8::from(stop)),
        ];
        let mut all = [0.0f64; 2];
        let comm = self.world.comm();
        comm.all_reduce(Elems::F64(&mine), ElemsMut::F64(&mut all), Op::Max)?;
        if all[0] == 0.0 {
            return local.map(|v| (v, all[1] != 0.0));
        }
        let root = w - all[0] as usize;
        let text = match &local {
            Err(e) if rank == root => e.to_string(),
            _ => String::new(),
        };
        let failed = TrainError::RankFailed {
            rank: root,
            world: w,
            msg: broadcast_text(&self.world, root, &text)?,
        };
        match local {
            // rank 0 reports its own error as it is; any other rank's error reaches rank 0
            // as RankFailed, which only rank 0 prints
            Err(e) if rank == root && rank == 0 => Err(e),
            _ => Err(failed),
        }
    }
}

/// DDP's all-reduce overlapped with the backward pass (from [`DataParallel::reducer`]). As
/// the last micro-batch's backward pass hands over finished ranges of the gradient arena
/// ([`GradHook`]), the reducer counts the finished elements of each bucket and starts a
/// bucket's sum over ranks (non-blocking) as soon as all of it is final, in bucket order (from
/// the end of the arena, the small bucket first), so that every rank starts the same sums in
/// the same order whatever its timing. Between ops it lets MPI make progress.
/// [`DataParallel::finish_reducer`] waits for them and writes the sums back.
pub struct BucketReducer<B: Backend> {
    world: World,
    /// The device's own engine: buckets reduced in place on its stream, nothing staged.
    device: Option<Device<B>>,
    /// Ranges of the arena, in the order they are started.
    buckets: Vec<Range<usize>>,
    /// Finished elements of each bucket.
    ready: Vec<usize>,
    /// The next bucket to start.
    next: usize,
    /// Started and not known to be finished, oldest first.
    pending: VecDeque<(usize, Box<dyn Pending>)>,
    /// Buckets whose sum had finished before the backward pass ended.
    hidden: usize,
    pool: Vec<SumBuffers>,
    poison: bool,
}

impl<B: Backend> std::fmt::Debug for BucketReducer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketReducer")
            .field("buckets", &self.buckets.len())
            .field("started", &self.next)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> BucketReducer<B> {
    /// The hook for a backward pass on `be`. `sum`: with gradient accumulation, the sum of
    /// the earlier micro-batches, which each finished range of the pass's own (zeroed)
    /// arena is added into before it is sent; `None` when the pass writes the step's arena.
    pub fn hook<'r>(
        &'r mut self,
        be: &'r B,
        sum: Option<&'r mut B::Buffer>,
    ) -> impl GradHook<B> + 'r {
        ReducerHook {
            reducer: self,
            be,
            sum,
        }
    }

    /// `range` of `grads` is final: counted, and every bucket now complete started.
    fn ready(
        &mut self,
        be: &B,
        grads: &mut B::Buffer,
        mut sum: Option<&mut B::Buffer>,
        range: Range<usize>,
    ) -> Result<()> {
        // buckets run from the end of the arena: the first whose start is below range.end
        let first = self.buckets.partition_point(|b| b.start >= range.end);
        for (b, bucket) in self.buckets.iter().enumerate().skip(first) {
            if bucket.end <= range.start {
                break;
            }
            self.ready[b] += bucket.end.min(range.end) - bucket.start.max(range.start);
        }
        while self.next < self.buckets.len()
            && self.ready[self.next] == self.buckets[self.next].len()
        {
            self.start(be, grads, sum.as_deref_mut())?;
        }
        Ok(())
    }

    /// Starts the sum of the next bucket: its gradients (added into `sum` first, if given;
    /// poisoned if asked) copied into a staging buffer that the collective owns.
    fn start(&mut self, be: &B, grads: &mut B::Buffer, sum: Option<&mut B::Buffer>) -> Result<()> {
        let b = self.next;
        let r = self.buckets[b].clone();
        let target = match sum {
            Some(sum) => {
                be.axpy(
                    1.0,
                    grads.slice(r.start, r.len()),
                    sum.slice_mut(r.start, r.len()),
                )?;
                sum
            }
            None => grads,
        };
        if self.poison && r.start == 0 {
            be.fill(target.slice_mut(0, 1), f32::INFINITY)?;
        }
        if let Some(dev) = &self.device {
            dev.all_reduce_sum(target.slice_mut(r.start, r.len()))?;
            self.next += 1;
            return Ok(());
        }
        let host = host_f32(be, target.slice(r.start, r.len()))?;
        let mut bufs = self.pool.pop().unwrap_or_default();
        bufs.send.clear();
        bufs.send.extend_from_slice(host);
        self.pending
            .push_back((b, self.world.comm().start_sum(bufs)?));
        self.next += 1;
        Ok(())
    }

    /// Lets the engine progress; the oldest finished sums written back into their buckets of
    /// `grads` (or of `sum`), their staging buffers kept for the next buckets.
    fn progress(
        &mut self,
        be: &B,
        grads: &mut B::Buffer,
        mut sum: Option<&mut B::Buffer>,
    ) -> Result<()> {
        while let Some((_, p)) = self.pending.front_mut() {
            if !p.test()? {
                break;
            }
            if let Some((b, p)) = self.pending.pop_front() {
                let target = sum.as_deref_mut().unwrap_or(&mut *grads);
                self.write_back(be, target, b, p.wait()?)?;
                self.hidden += 1;
            }
        }
        Ok(())
    }

    /// The sum of bucket `b` into `target`; its buffers back into the pool.
    fn write_back(
        &mut self,
        be: &B,
        target: &mut B::Buffer,
        b: usize,
        bufs: SumBuffers,
    ) -> Result<()> {
        let r = self.buckets[b].clone();
        host_f32_mut(be, target.slice_mut(r.start, r.len()))?.copy_from_slice(&bufs.recv);
        self.pool.push(bufs);
        Ok(())
    }

    fn finish(&mut self, be: &B, grads: &mut B::Buffer) -> Result<()> {
        while self.next < self.buckets.len() {
            self.start(be, grads, None)?;
        }
        if let Some(dev) = &self.device {
            // the step's next kernels wait for the buckets on the device
            return Ok(dev.join()?);
        }
        while let Some((b, p)) = self.pending.pop_front() {
            self.write_back(be, grads, b, p.wait()?)?;
        }
        Ok(())
    }
}

/// A [`BucketReducer`] lent to one backward pass.
struct ReducerHook<'r, B: Backend> {
    reducer: &'r mut BucketReducer<B>,
    be: &'r B,
    sum: Option<&'r mut B::Buffer>,
}

impl<B: Backend> GradHook<B> for ReducerHook<'_, B> {
    fn ready(&mut self, grads: &mut B::Buffer, range: Range<usize>) -> HookResult {
        let sum = self.sum.as_deref_mut();
        Ok(self.reducer.ready(self.be, grads, sum, range)?)
    }
    fn progress(&mut self, grads: &mut B::Buffer) -> HookResult {
        let sum = self.sum.as_deref_mut();
        Ok(self.reducer.progress(self.be, grads, sum)?)
    }
}

fn no_host<B: Backend>(be: &B) -> TrainError {
    TrainError::invalid(
        "backend",
        be.name(),
        "a data-parallel run needs arenas in host memory (the cpu backend, over MPI) or the \
         device's own collectives (cuda with NCCL: build with --features nccl)",
    )
}

/// The FP32 elements of a view in host memory.
fn host_f32_mut<'v, B: Backend>(be: &B, v: ViewMut<'v, B::Buffer>) -> Result<&'v mut [f32]> {
    let bytes = be.host_bytes_mut(v).ok_or_else(|| no_host(be))?;
    bytemuck::try_cast_slice_mut(bytes)
        .map_err(|e| TrainError::invalid("grad_dtype", "fp32", format!("the gradient arena: {e}")))
}

/// The FP32 elements of a read-only view in host memory.
pub fn host_f32<'v, B: Backend>(be: &B, v: View<'v, B::Buffer>) -> Result<&'v [f32]> {
    let bytes = be.host_bytes(v).ok_or_else(|| no_host(be))?;
    bytemuck::try_cast_slice(bytes)
        .map_err(|e| TrainError::invalid("grad_dtype", "fp32", format!("the arena: {e}")))
}

/// Rank 0's `text` on every rank (the name of a run folder that rank 0 chose, say).
pub fn broadcast_string(world: &World, text: &str) -> Result<String> {
    broadcast_text(world, 0, text)
}

/// Rank `root`'s `text` on every rank (the others' `text` is ignored).
fn broadcast_text(world: &World, root: usize, text: &str) -> Result<String> {
    let bytes = broadcast_bytes(world, root, text.as_bytes())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Rank `root`'s `bytes` on every rank (the others' are ignored): the length, then the bytes.
fn broadcast_bytes(world: &World, root: usize, bytes: &[u8]) -> Result<Vec<u8>> {
    if world.size() == 1 {
        return Ok(bytes.to_vec());
    }
    let comm = world.comm();
    let mut len = [bytes.len() as f64];
    comm.broadcast(ElemsMut::F64(&mut len), root)?;
    let mut out = vec![0u8; len[0] as usize];
    if world.rank() == root {
        out.copy_from_slice(bytes);
    }
    comm.broadcast(ElemsMut::U8(&mut out), root)?;
    Ok(out)
}
