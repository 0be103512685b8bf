//! `--device`: which candle device a run, a bench or a check uses, and how results name it.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parse `--device`.
pub fn device(spec: &str) -> Result<Device> {
    let cuda = |i: usize| -> Result<Device> {
        if !cfg!(feature = "cuda") {
            bail!(
                "--device {spec}: this binary was built without CUDA (build with --features cuda)"
            );
        }
        Device::new_cuda(i).with_context(|| format!("--device {spec}: no usable CUDA device {i}"))
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        // The first GPU if one can be opened (a CUDA build on a machine without a driver, or
        // with a broken one, falls back to the CPU), else the CPU.
        "auto" => Ok(if cfg!(feature = "cuda") {
            cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        "cuda" => cuda(0),
        s if s.starts_with("cuda:") => cuda(
            s[5..]
                .parse()
                .with_context(|| format!("bad device `{s}`"))?,
        ),
        s => bail!("unknown device `{s}` (expected cpu, cuda, cuda:N or auto)"),
    }
}

/// The CPU threads a run computes with when RAYON_NUM_THREADS does not say (resolved once, in
/// main): candle's default, the machine's physical cores read from /proc/cpuinfo, capped by the
/// CPUs this process may use (`taskset`, Slurm's `--cpus-per-task`, a container's CPU limit:
/// `available_parallelism` reads the affinity mask and cgroup quota). Uncapped, a 2-CPU Slurm
/// task on a 64-core node split every GEMM 64 ways, and threads outnumbering CPUs make each
/// parallel op wait for a descheduled thread (BENCHMARKS.md, "Two runs on one machine").
pub fn default_cpu_threads() -> usize {
    let physical = candle_core::utils::get_num_threads();
    let usable = std::thread::available_parallelism().map_or(physical, |n| n.get());
    physical.min(usable).max(1)
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        other => format!("{other:?}"),
    }
}

/// How a run's result names where it ran: the device and, on the CPU, the CPU's model name, so
/// the wall-clock a result reports always says what it was measured on. (Results written before
/// this carry `device_name` alone.)
pub fn run_device_name(d: &Device) -> String {
    match d {
        Device::Cpu => format!(
            "cpu ({} threads, {})",
            candle_core::utils::get_num_threads(),
            cpu_model()
        ),
        other => device_name(other),
    }
}

/// The CPU's model name (`/proc/cpuinfo`), for every speed figure.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
