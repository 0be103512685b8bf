//! The `harness` binary: parse arguments, run, and turn every error into one line on stderr with a
//! non-zero exit code.

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
