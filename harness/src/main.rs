//! The `harness` binary: parse arguments, run, and turn every error into one line on stderr with a
//! non-zero exit code.

// candle allocates fresh buffers for every op; glibc returns large ones to the OS and page-faults
// them back in on the next step (measured: ~30% of a small model's step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
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
