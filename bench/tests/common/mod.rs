//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::process::Output;

use isonvme_bench::config::{parse_args, Command, Config};
use isonvme_bench::run::{self, Outcome};

/// The parsed configuration of `args` (progress off).
pub fn config(args: &[&str]) -> Config {
    let mut args: Vec<&str> = args.to_vec();
    args.push("--eta=never");
    match parse_args(&args) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Print(_)) => panic!("{args:?} printed instead of running"),
        Err(error) => panic!("{args:?}: {error}"),
    }
}

/// Runs `args` in this process.
pub fn run(args: &[&str]) -> Outcome {
    run::execute(&config(args), &[]).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs the binary with `args`.
pub fn bench(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_isonvme-bench"))
        .args(args)
        .output()
        .expect("running isonvme-bench")
}

/// stdout and stderr as text.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
