//! The driver: `threads` tokio tasks issue operations back to back (a
//! closed loop, as YCSB without a target rate) until the operation count
//! or the duration runs out, each recording into its own histograms.
//!
//! With `--target` each task keeps a schedule instead, but still waits for
//! its last operation: at most `threads` operations are ever in flight, so
//! a server slower than the target sees no more than that. With
//! `--max-in-flight` as well (the overload mode), one dispatcher starts
//! every operation at its scheduled time in a task of its own, whatever
//! the earlier ones are doing, up to that many in flight (beyond it the
//! operation is counted as not started): the offered load is the target,
//! as from many independent clients. Operations a server refuses with
//! OVERLOADED are counted apart from failures.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::backend::Backend;
use crate::generator::{Distribution, InsertSequence, KeyChooser};
use crate::memory::{self, MemoryReport};
use crate::scope::Placement;
use crate::stats::{Progress, Recorder, Report};
use crate::workload::{account_key, record_key, OpKind, Workload, INITIAL_BALANCE, RECORD_KEY_END};

/// How many failures are printed to stderr before going quiet.
const ERRORS_SHOWN: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Load,
    Run,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Run => "run",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub phase: Phase,
    pub workload: Workload,
    pub threads: usize,
    pub seed: u64,
    pub duration: Option<Duration>,
    pub progress: bool,
    pub backend_name: &'static str,
    /// Accounts by shard, for a `--txn-scope` other than `any`.
    pub placement: Option<Arc<Placement>>,
    /// Names of local processes whose RSS to sample (`--watch-rss`).
    pub watch_rss: Vec<String>,
    /// Open loop: operations per second in total, spread evenly over the
    /// threads, each on a fixed schedule (None: closed loop).
    pub target: Option<f64>,
    /// With `target`: start each operation on schedule in its own task,
    /// with at most this many in flight (see the module doc).
    pub max_in_flight: Option<usize>,
    /// Load: records per operation (`--batch`; 1 is one `put` each).
    pub batch: u64,
}

struct Ctx<B> {
    backend: Arc<B>,
    spec: Spec,
    limit: u64,
    claimed: AtomicU64,
    deadline: Option<Instant>,
    stop: AtomicBool,
    inserts: InsertSequence,
    /// Accounts never grow: a fixed window of `recordcount`.
    accounts: InsertSequence,
    op_table: Vec<(f64, OpKind)>,
    progress: Progress,
    errors: AtomicU64,
}

/// Refused by a server's admission control: the client gave up on an
/// OVERLOADED answer (after its own retries), and nothing was done.
fn overloaded(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<pact_client::ClientError>(),
            Some(pact_client::ClientError::Overloaded(_))
        )
    })
}

impl<B: Backend> Ctx<B> {
    fn note_error(&self, kind: OpKind, key: &[u8], e: &anyhow::Error) {
        tracing::debug!(op = kind.name(), key = %String::from_utf8_lossy(key), "failed: {e:#}");
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < ERRORS_SHOWN {
            eprintln!(
                "bench: {} {} failed: {e:#}",
                kind.name(),
                String::from_utf8_lossy(key)
            );
        } else if n == ERRORS_SHOWN {
            eprintln!("bench: more failures; only counting them from now on");
        }
    }
}

/// Run one phase and report it.
pub async fn execute<B: Backend>(backend: Arc<B>, spec: Spec) -> anyhow::Result<Report> {
    let w = &spec.workload;
    let limit = match spec.phase {
        // Load operation n writes records [n * batch, (n + 1) * batch).
        Phase::Load => w.recordcount.div_ceil(spec.batch.max(1)),
        Phase::Run => w.operationcount.unwrap_or(u64::MAX),
    };
    // Built once, before the clock starts: summing zeta for a large key
    // space is not free.
    let dist = match spec.phase {
        Phase::Load => Distribution::Uniform, // unused: load goes in order
        Phase::Run => w.requestdistribution,
    };
    let chooser = KeyChooser::new(dist, w.recordcount, w.expected_inserts());
    let ctx = Arc::new(Ctx {
        backend,
        limit,
        claimed: AtomicU64::new(0),
        deadline: spec.duration.and_then(|d| Instant::now().checked_add(d)),
        stop: AtomicBool::new(false),
        inserts: InsertSequence::new(w.recordcount),
        accounts: InsertSequence::new(w.recordcount),
        op_table: w.op_table(),
        progress: Progress::new(spec.progress),
        errors: AtomicU64::new(0),
        spec,
    });
    let retries_before = ctx.backend.txn_retries();
    let started = SystemTime::now();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    match (ctx.spec.target, ctx.spec.max_in_flight) {
        (Some(target), Some(cap)) => {
            tasks.push(tokio::spawn(dispatch(ctx.clone(), target, cap, chooser)))
        }
        _ => {
            for id in 0..ctx.spec.threads {
                tasks.push(tokio::spawn(worker(ctx.clone(), id, chooser.clone())));
            }
        }
    }
    let progress = ctx
        .spec
        .progress
        .then(|| tokio::spawn(progress_loop(ctx.clone(), t0)));
    let memory = Arc::new(std::sync::Mutex::new(MemoryReport::default()));
    let procs = memory::find(Path::new("/proc"), &ctx.spec.watch_rss);
    let sampler = (!ctx.spec.watch_rss.is_empty())
        .then(|| tokio::spawn(sample_memory(ctx.clone(), procs.clone(), memory.clone())));
    let stopper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("bench: interrupted; reporting what was measured");
                ctx.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let mut data = Recorder::default();
    for t in tasks {
        data.merge(&t.await?);
    }
    let elapsed = t0.elapsed();
    let txn_retries = ctx.backend.txn_retries().saturating_sub(retries_before);
    stopper.abort();
    if let Some(p) = progress {
        p.abort();
    }
    let memory = match sampler {
        Some(s) => {
            s.abort();
            let mut m = memory.lock().map(|m| m.clone()).unwrap_or_default();
            m.record(&procs, ctx.progress.totals().0);
            Some(m)
        }
        None => None,
    };
    Ok(Report {
        memory,
        phase: ctx.spec.phase.name(),
        workload: ctx.spec.workload.name.clone(),
        params: {
            let mut p = ctx.spec.workload.params();
            p["target_ops_sec"] = serde_json::json!(ctx.spec.target);
            p["max_in_flight"] = serde_json::json!(ctx.spec.max_in_flight);
            if ctx.spec.phase == Phase::Load {
                p["batch"] = serde_json::json!(ctx.spec.batch);
            }
            p
        },
        backend: ctx.spec.backend_name,
        threads: ctx.spec.threads,
        seed: ctx.spec.seed,
        elapsed,
        started,
        data,
        txn_retries,
    })
}

/// Once a second: every watched process's RSS beside the operations done.
async fn sample_memory<B: Backend>(
    ctx: Arc<Ctx<B>>,
    procs: Vec<memory::Proc>,
    out: Arc<std::sync::Mutex<MemoryReport>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let ops = ctx.progress.totals().0;
        // /proc reads are small and local; a blocking thread keeps them off
        // the workers all the same.
        let procs = procs.clone();
        let out = out.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut m) = out.lock() {
                m.record(&procs, ops);
            }
        })
        .await;
    }
}

async fn progress_loop<B: Backend>(ctx: Arc<Ctx<B>>, t0: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let (ok, failed) = ctx.progress.totals();
        let shed = match ctx.progress.overloaded() {
            0 => String::new(),
            n => format!(", {n} overloaded"),
        };
        // Latencies of this last second alone: a stall shows at once
        // instead of being averaged away by the whole run.
        let latency = match ctx.progress.take_interval() {
            Some((p50, p99)) => format!("p50 {} p99 {}; ", ms(p50), ms(p99)),
            None => String::new(),
        };
        let line = format!(
            "bench: {} {:>4} s: {ok} ops ({} ops/s now, {latency}{failed} failed{shed}); {}",
            ctx.spec.phase.name(),
            t0.elapsed().as_secs(),
            ok - last,
            ctx.progress.by_kind()
        );
        last = ok;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

/// Microseconds as `0.84 ms` / `12.3 ms` / `1534 ms`.
fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Random printable bytes: the record's fields, joined.
fn record_value(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random_range(b'!'..=b'~')).collect()
}

async fn worker<B: Backend>(ctx: Arc<Ctx<B>>, id: usize, mut chooser: KeyChooser) -> Recorder {
    // Distinct, reproducible stream per task.
    let mut rng =
        StdRng::seed_from_u64(ctx.spec.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut rec = Recorder::default();
    // Open loop: this task's operations are due every `threads / target`
    // seconds, the tasks' schedules staggered across one interval.
    let schedule = ctx.spec.target.map(|t| {
        let every = Duration::from_secs_f64(ctx.spec.threads as f64 / t);
        let first = Instant::now() + every.mul_f64(id as f64 / ctx.spec.threads as f64);
        (every, first)
    });
    let mut due = schedule.map(|(_, first)| first);
    loop {
        if let Some(d) = due {
            tokio::time::sleep_until(d.into()).await;
        }
        if ctx.stop.load(Ordering::Relaxed) || ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = ctx.claimed.fetch_add(1, Ordering::Relaxed);
        if n >= ctx.limit {
            break;
        }
        rec.intended = due;
        if let (Some(d), Some((every, _))) = (due, schedule) {
            due = Some(d + every);
        }
        match ctx.spec.phase {
            Phase::Load => load_one(&ctx, &mut rng, &mut rec, n).await,
            Phase::Run => {
                let u: f64 = rng.random();
                let kind = ctx
                    .op_table
                    .iter()
                    .find(|(t, _)| u < *t)
                    .or(ctx.op_table.last())
                    .map(|(_, k)| *k)
                    .unwrap_or(OpKind::Read);
                run_one(&ctx, &mut rng, &mut chooser, &mut rec, kind).await;
            }
        }
    }
    rec
}

/// The overload mode's driver: one operation every `1 / target` seconds,
/// each in a task of its own started at its scheduled time, at most `cap`
/// in flight. Each operation draws from an RNG seeded by the dispatcher's,
/// so a run is reproducible from its seed; results go to a pool of
/// recorders (one per concurrently running operation at most), merged at
/// the end.
async fn dispatch<B: Backend>(
    ctx: Arc<Ctx<B>>,
    target: f64,
    cap: usize,
    chooser: KeyChooser,
) -> Recorder {
    let mut rng = StdRng::seed_from_u64(ctx.spec.seed);
    let room = Arc::new(tokio::sync::Semaphore::new(cap.max(1)));
    let pool: Arc<std::sync::Mutex<Vec<Recorder>>> = Arc::default();
    let every = Duration::from_secs_f64(1.0 / target);
    let t0 = Instant::now();
    let mut not_started = 0;
    let mut running = tokio::task::JoinSet::new();
    for i in 0u64.. {
        let due = t0 + every.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        if ctx.stop.load(Ordering::Relaxed) || ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Reap what finished, so the set holds only what runs.
        while running.try_join_next().is_some() {}
        let Ok(slot) = room.clone().try_acquire_owned() else {
            not_started += 1;
            continue;
        };
        let n = ctx.claimed.fetch_add(1, Ordering::Relaxed);
        if n >= ctx.limit {
            break;
        }
        let u: f64 = rng.random();
        let kind = ctx
            .op_table
            .iter()
            .find(|(t, _)| u < *t)
            .or(ctx.op_table.last())
            .map(|(_, k)| *k)
            .unwrap_or(OpKind::Read);
        let mut op_rng = StdRng::seed_from_u64(rng.random());
        let mut chooser = chooser.clone();
        let (ctx, pool) = (ctx.clone(), pool.clone());
        running.spawn(async move {
            let mut rec = pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_default();
            rec.intended = Some(due);
            match ctx.spec.phase {
                Phase::Load => load_one(&ctx, &mut op_rng, &mut rec, n).await,
                Phase::Run => run_one(&ctx, &mut op_rng, &mut chooser, &mut rec, kind).await,
            }
            if let Ok(mut p) = pool.lock() {
                p.push(rec);
            }
            drop(slot);
        });
    }
    while running.join_next().await.is_some() {}
    let mut all = Recorder::default();
    if let Ok(p) = pool.lock() {
        for r in p.iter() {
            all.merge(r);
        }
    }
    all.not_started = not_started;
    all
}

async fn timed<B: Backend, T>(
    ctx: &Ctx<B>,
    rec: &mut Recorder,
    kind: OpKind,
    key: &[u8],
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    let t = rec.intended.take().unwrap_or_else(Instant::now);
    let r = fut.await;
    let latency = t.elapsed();
    match r {
        Ok(v) => {
            rec.record(kind, latency, true, &ctx.progress);
            Some(v)
        }
        Err(e) if overloaded(&e) => {
            rec.reject(kind, &ctx.progress);
            None
        }
        Err(e) => {
            rec.record(kind, latency, false, &ctx.progress);
            ctx.note_error(kind, key, &e);
            None
        }
    }
}

async fn load_one<B: Backend>(ctx: &Ctx<B>, rng: &mut StdRng, rec: &mut Recorder, n: u64) {
    let w = &ctx.spec.workload;
    let batch = ctx.spec.batch.max(1);
    let first = n.saturating_mul(batch);
    let nums = first..first.saturating_add(batch).min(w.recordcount);
    let mut records = Vec::new();
    if w.needs_records() {
        records.extend(
            nums.clone()
                .map(|i| (record_key(i), record_value(rng, w.record_bytes()))),
        );
    }
    if w.needs_accounts() {
        records.extend(nums.map(|i| (account_key(i), INITIAL_BALANCE.to_string().into_bytes())));
    }
    if batch == 1 {
        // One `put` per record, each its own INSERT.
        for (key, value) in &records {
            timed(ctx, rec, OpKind::Insert, key, ctx.backend.put(key, value)).await;
        }
        return;
    }
    let Some((key, _)) = records.first() else {
        return;
    };
    let (key, written) = (key.clone(), records.len() as u64);
    if timed(
        ctx,
        rec,
        OpKind::Insert,
        &key,
        ctx.backend.put_batch(&records),
    )
    .await
    .is_some()
    {
        rec.records += written;
    }
}

async fn run_one<B: Backend>(
    ctx: &Ctx<B>,
    rng: &mut StdRng,
    chooser: &mut KeyChooser,
    rec: &mut Recorder,
    kind: OpKind,
) {
    let w = &ctx.spec.workload;
    let b = &ctx.backend;
    match kind {
        OpKind::Read => {
            let key = record_key(chooser.next(rng, &ctx.inserts));
            timed(ctx, rec, kind, &key, async {
                b.get(&key)
                    .await?
                    .map(|_| ())
                    .ok_or_else(|| anyhow::anyhow!("not found"))
            })
            .await;
        }
        OpKind::Update => {
            let key = record_key(chooser.next(rng, &ctx.inserts));
            let value = record_value(rng, w.record_bytes());
            timed(ctx, rec, kind, &key, b.put(&key, &value)).await;
        }
        OpKind::Insert => {
            let n = ctx.inserts.allocate();
            let key = record_key(n);
            let value = record_value(rng, w.record_bytes());
            timed(ctx, rec, kind, &key, b.put(&key, &value)).await;
            ctx.inserts.acknowledge(n);
        }
        OpKind::Scan => {
            let key = record_key(chooser.next(rng, &ctx.inserts));
            let len = rng.random_range(1..=w.maxscanlength.max(1));
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            timed(ctx, rec, kind, &key, b.scan(&key, RECORD_KEY_END, len)).await;
        }
        OpKind::ReadModifyWrite => {
            // As YCSB: a read, then a write of the record; not atomic.
            let key = record_key(chooser.next(rng, &ctx.inserts));
            let value = record_value(rng, w.record_bytes());
            timed(ctx, rec, kind, &key, async {
                b.get(&key)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("not found"))?;
                b.put(&key, &value).await
            })
            .await;
        }
        OpKind::Txn => {
            let want = w.txn_keys as usize;
            let nums = match &ctx.spec.placement {
                Some(p) => {
                    let first = chooser.next(rng, &ctx.accounts) % w.recordcount;
                    p.pick(rng, first, want)
                }
                None => {
                    let mut nums: Vec<u64> = Vec::with_capacity(want);
                    let mut tries = 0;
                    while nums.len() < want {
                        let k = chooser.next(rng, &ctx.accounts) % w.recordcount;
                        tries += 1;
                        if !nums.contains(&k) {
                            nums.push(k);
                        } else if tries > 100 * want {
                            // A very skewed chooser keeps repeating: fill in order.
                            if let Some(k) = (0..w.recordcount).find(|k| !nums.contains(k)) {
                                nums.push(k);
                            }
                        }
                    }
                    nums
                }
            };
            let keys: Vec<Vec<u8>> = nums.into_iter().map(account_key).collect();
            let amount = rng.random_range(1..=100);
            timed(ctx, rec, kind, &keys[0], b.txn_transfer(&keys, amount)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read takes 20 ms.
    struct Slow;

    impl Backend for Slow {
        async fn get(&self, _: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Some(b"v".to_vec()))
        }
        async fn put(&self, _: &[u8], _: &[u8]) -> anyhow::Result<()> {
            Ok(())
        }
        async fn put_batch(&self, _: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
            Ok(())
        }
        async fn scan(&self, _: &[u8], _: &[u8], _: u32) -> anyhow::Result<usize> {
            Ok(0)
        }
        async fn txn_transfer(&self, _: &[Vec<u8>], _: i64) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// Every read takes 200 ms; every third is refused as overloaded.
    #[derive(Default)]
    struct Busy {
        n: AtomicU64,
    }

    impl Backend for Busy {
        async fn get(&self, _: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.n.fetch_add(1, Ordering::Relaxed).is_multiple_of(3) {
                return Err(pact_client::ClientError::Overloaded("busy".into()).into());
            }
            Ok(Some(b"v".to_vec()))
        }
        async fn put(&self, _: &[u8], _: &[u8]) -> anyhow::Result<()> {
            Ok(())
        }
        async fn put_batch(&self, _: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
            Ok(())
        }
        async fn scan(&self, _: &[u8], _: &[u8], _: u32) -> anyhow::Result<usize> {
            Ok(0)
        }
        async fn txn_transfer(&self, _: &[Vec<u8>], _: i64) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// With an in-flight cap the open loop starts each operation on time
    /// whatever the earlier ones do: one thread, 200 ms operations, yet
    /// about 100/s run, each measured from its own start; refusals are
    /// counted apart from failures. A small cap leaves operations unstarted.
    #[tokio::test]
    async fn overload_mode_starts_operations_on_schedule_and_counts_refusals() {
        let mut s = spec(Some(100.0));
        s.max_in_flight = Some(1000);
        let r = execute(Arc::new(Busy::default()), s).await.unwrap();
        let started = r.ok_ops() + r.overloaded_ops();
        assert!(started >= 100, "{started} operations in 1.5 s at 100/s");
        assert!(r.overloaded_ops() >= started / 4, "{r:?}");
        assert_eq!(r.failed_ops(), 0, "refusals are not failures");
        let p50 = r.latency_us(OpKind::Read, 0.5).unwrap();
        assert!(
            p50 < 1_000_000,
            "p50 {p50} us: not queued behind each other"
        );
        assert!(r.json()["overloaded"].as_u64().unwrap() > 0);
        assert!(r.text().contains("[OVERLOADED], Operations"));
        let mut s = spec(Some(100.0));
        s.max_in_flight = Some(5);
        let r = execute(Arc::new(Busy::default()), s).await.unwrap();
        assert!(
            r.data.not_started > 50,
            "{} not started",
            r.data.not_started
        );
        assert!(r.ok_ops() + r.overloaded_ops() < 60);
    }

    /// Keeps every batch it is given; batches holding `user7` fail.
    #[derive(Default)]
    struct Batches {
        seen: std::sync::Mutex<Vec<Vec<Vec<u8>>>>,
    }

    impl Backend for Batches {
        async fn get(&self, _: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
            Ok(None)
        }
        async fn put(&self, _: &[u8], _: &[u8]) -> anyhow::Result<()> {
            Err(anyhow::anyhow!("a batched load must not put one by one"))
        }
        async fn put_batch(&self, records: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
            let keys: Vec<Vec<u8>> = records.iter().map(|(k, _)| k.clone()).collect();
            let bad = keys.iter().any(|k| k == b"user7");
            self.seen.lock().unwrap().push(keys);
            if bad {
                return Err(anyhow::anyhow!("refused"));
            }
            Ok(())
        }
        async fn scan(&self, _: &[u8], _: &[u8], _: u32) -> anyhow::Result<usize> {
            Ok(0)
        }
        async fn txn_transfer(&self, _: &[Vec<u8>], _: i64) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// `--batch 4` over 10 records: 3 operations of 4, 4 and 2 records,
    /// each record in exactly one; the failed batch's records are not
    /// counted as written.
    #[tokio::test]
    async fn batched_load_writes_each_record_once_and_counts_records() {
        let backend = Arc::new(Batches::default());
        let mut s = spec(None);
        s.phase = Phase::Load;
        s.duration = None;
        s.threads = 2;
        s.batch = 4;
        let r = execute(backend.clone(), s).await.unwrap();
        let mut sizes: Vec<usize> = backend.seen.lock().unwrap().iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![2, 4, 4]);
        let mut keys: Vec<Vec<u8>> = backend.seen.lock().unwrap().concat();
        keys.sort();
        let mut want: Vec<Vec<u8>> = (0..10).map(record_key).collect();
        want.sort();
        assert_eq!(keys, want);
        assert_eq!((r.ok_ops(), r.failed_ops()), (2, 1));
        // user7 is in the batch of records 4..8.
        assert_eq!(r.data.records, 6);
        assert_eq!(r.json()["records"], 6);
        assert!(r.text().contains("[OVERALL], RecordsPerBatch, 4"));
    }

    fn spec(target: Option<f64>) -> Spec {
        let mut workload = Workload::preset("c").unwrap();
        workload.recordcount = 10;
        workload.operationcount = None;
        Spec {
            phase: Phase::Run,
            workload,
            threads: 1,
            seed: 1,
            duration: Some(Duration::from_millis(1500)),
            progress: false,
            backend_name: "slow",
            placement: None,
            watch_rss: Vec::new(),
            target,
            max_in_flight: None,
            batch: 1,
        }
    }

    /// Asked for 200 reads/s from a store that serves 50/s, the open loop
    /// counts the time each read waited for its turn, so its latencies
    /// grow far past the 20 ms service time; the closed loop reports the
    /// service time alone.
    #[tokio::test]
    async fn open_loop_latency_counts_from_the_scheduled_start() {
        let closed = execute(Arc::new(Slow), spec(None)).await.unwrap();
        let open = execute(Arc::new(Slow), spec(Some(200.0))).await.unwrap();
        let closed_p50 = closed.latency_us(OpKind::Read, 0.5).unwrap();
        let open_p50 = open.latency_us(OpKind::Read, 0.5).unwrap();
        let open_max = open.latency_us(OpKind::Read, 1.0).unwrap();
        assert!(closed_p50 < 100_000, "closed p50 {closed_p50} us");
        // The last reads were due about 1.1 s before they could start.
        assert!(open_max > 500_000, "open max {open_max} us");
        assert!(
            open_p50 > 3 * closed_p50,
            "open p50 {open_p50} vs {closed_p50} us"
        );
        // At a rate the store can serve, the schedule paces the reads.
        let paced = execute(Arc::new(Slow), spec(Some(10.0))).await.unwrap();
        let n = paced.ok_ops();
        assert!((12..=17).contains(&n), "{n} reads in 1.5 s at 10/s");
        assert!(paced.latency_us(OpKind::Read, 0.5).unwrap() < 100_000);
    }
}
