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

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        other => format!("{other:?}"),
    }
}
