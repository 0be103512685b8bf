//! The `harness` binary: parse arguments, run, and turn every error into one line on stderr with a
//! non-zero exit code.

// candle allocates fresh buffers for every op; glibc returns large ones to the OS and page-faults
// them back in on the next step (measured: ~30% of a small model's step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (index 15 in both mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`harness reproduce --plan | head`)
    // panics; the default action ends the process quietly instead, as `cat` would.
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition before any other thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Never hand freed pages back to the OS: a training step frees and reallocates the same
    // buffers every time, and re-faulting them cost 20-25% of a small model's step (measured,
    // BENCHMARKS.md). MIMALLOC_PURGE_DELAY in the environment still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; called before any other thread starts.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    // candle asks for its thread count on every CPU matmul, and without RAYON_NUM_THREADS that
    // means parsing /proc/cpuinfo each time: 80% of a KV-cache decoding step (perf). Resolve it
    // once: rayon's pool keeps its own default (built first: the CPUs this process may use),
    // candle's GEMMs get the physical cores, capped by those usable CPUs
    // (`device::default_cpu_threads`).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let _ = rayon::ThreadPoolBuilder::new().build_global();
        std::env::set_var(
            "RAYON_NUM_THREADS",
            harness::device::default_cpu_threads().to_string(),
        );
    }
    let code = match harness::cli::parse() {
        Ok(cli) => match harness::cli::run(cli) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {}", harness::one_line(&e));
                1
            }
        },
        Err(code) => code,
    };
    std::process::exit(code);
}
