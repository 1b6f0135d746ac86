//! /proc readings (CPU time, RSS) and CPU pinning.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chanrelay_testkit::proc_status_field;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of CPU numbers, parsed from "0", "0,2", "0-3".
#[derive(Clone, Debug)]
pub struct CpuSet(pub Vec<usize>);

impl std::str::FromStr for CpuSet {
    type Err = String;
    fn from_str(s: &str) -> Result<CpuSet, String> {
        let mut v = Vec::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            if let Some((a, b)) = part.split_once('-') {
                let a: usize = a.trim().parse().map_err(|_| format!("bad cpu {a:?}"))?;
                let b: usize = b.trim().parse().map_err(|_| format!("bad cpu {b:?}"))?;
                if b < a || b >= 1024 {
                    return Err(format!("bad cpu range {part:?}"));
                }
                v.extend(a..=b);
            } else {
                let c: usize = part
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad cpu {part:?}"))?;
                if c >= 1024 {
                    return Err(format!("bad cpu {c}"));
                }
                v.push(c);
            }
        }
        if v.is_empty() {
            return Err("empty cpu list".into());
        }
        Ok(CpuSet(v))
    }
}

/// Sets the affinity of thread/process `tid` (0 = calling thread).
pub fn set_affinity(tid: i32, cpus: &CpuSet) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it for cpus < 1024
    // (checked at parse time); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in &cpus.0 {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Pins every thread of process `pid` (what `taskset -a -p` does).
pub fn set_affinity_all_tasks(pid: u32, cpus: &CpuSet) {
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                set_affinity(tid, cpus);
            }
        }
    }
}

/// Sets the scheduling priority (nice value) of every thread of process `pid` (what
/// `renice -n N` does for each of `/proc/PID/task`). Threads created later inherit it from
/// the thread that creates them.
pub fn set_nice_all_tasks(pid: u32, nice: i32) -> bool {
    let mut ok = true;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                // SAFETY: plain syscall on a thread id; no memory is passed.
                let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
                ok &= rc == 0;
            }
        }
    }
    ok
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of `pid` in seconds (all threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name: state is field 3; utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / clk_tck())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_field(pid, "VmRSS:")
}

pub fn hwm_kib(pid: u32) -> Option<u64> {
    proc_status_field(pid, "VmHWM:")
}

/// One sample: seconds since start, the progress counter, and the process's RSS.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Sample {
    pub t: f64,
    pub count: u64,
    pub rss_kib: u64,
}

/// Samples a progress counter and a process's RSS on a timer; drives the progress bar.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    bar: ProgressBar,
}

pub struct SamplerSpec {
    pub pid: Option<u32>,
    pub counter: Arc<AtomicU64>,
    pub total: u64,
    pub bytes: bool,
    pub label: String,
    pub interval: Duration,
    pub progress: bool,
}

impl Sampler {
    pub fn start(spec: SamplerSpec) -> Sampler {
        let bar = if spec.progress {
            ProgressBar::with_draw_target(Some(spec.total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        let tmpl = if spec.bytes {
            "{prefix:>28} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec}"
        } else {
            "{prefix:>28} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}"
        };
        bar.set_style(ProgressStyle::with_template(tmpl).unwrap());
        bar.set_prefix(spec.label.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let (st, sm, b) = (stop.clone(), samples.clone(), bar.clone());
        let handle = std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let t0 = Instant::now();
                loop {
                    let c = spec.counter.load(Ordering::Relaxed);
                    let rss = spec.pid.and_then(rss_kib).unwrap_or(0);
                    sm.lock().unwrap().push(Sample {
                        t: t0.elapsed().as_secs_f64(),
                        count: c,
                        rss_kib: rss,
                    });
                    b.set_position(c.min(spec.total));
                    if st.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(spec.interval);
                }
            })
            .expect("spawn sampler");
        Sampler {
            stop,
            handle: Some(handle),
            samples,
            bar,
        }
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.bar.finish_and_clear();
        std::mem::take(&mut *self.samples.lock().unwrap())
    }

    pub fn peak_rss_kib(&self) -> u64 {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0)
    }
}
