//! `isonvme-bench`: see the crate documentation and `--help`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::ExitCode::from(isonvme_bench::cli::main(&args))
}
