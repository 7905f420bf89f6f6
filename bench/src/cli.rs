//! The program: parse, run, report, and the exit status (0: every job ran
//! cleanly; 1: a job failed or verify found a mismatch; 2: bad options;
//! 130: interrupted, with the report of what ran).

use std::io::Write as _;

use std::sync::atomic::Ordering;

use crate::config::{self, Command, Config, Formats};
use crate::job::INTERRUPTED;
use crate::run::{self, Outcome, RunError};
use crate::{compare, output, svg};

/// Runs the program with `args` (without the program name); returns the
/// exit status.
pub fn main(args: &[String]) -> u8 {
    let config = match config::parse_args(args) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Print(text)) => {
            print!("{text}");
            return 0;
        }
        Err(error) => {
            eprintln!("isonvme-bench: {error}");
            return 2;
        }
    };
    stop_on_interrupt();
    let ran = run_config(&config);
    if INTERRUPTED.load(Ordering::Relaxed) {
        eprintln!("isonvme-bench: interrupted; the report covers the time the jobs ran");
        if let Err(error) = &ran {
            eprintln!("isonvme-bench: {error}");
        }
        return 130;
    }
    match ran {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(error) => {
            eprintln!("isonvme-bench: {error}");
            if error.usage {
                2
            } else {
                1
            }
        }
    }
}

/// The first Ctrl-C (or SIGTERM/SIGHUP) stops the jobs, which then report
/// what they measured; a second one exits at once, as fio does.
fn stop_on_interrupt() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::Relaxed) {
            eprintln!("isonvme-bench: interrupted twice; exiting without a report");
            std::process::exit(130);
        }
        eprintln!("isonvme-bench: stopping the jobs (interrupt again to quit at once)");
    });
    if let Err(error) = installed {
        eprintln!("isonvme-bench: note: Ctrl-C will end the run without a report ({error})");
    }
}

/// The report in the formats asked for (fio prints each in turn).
pub fn render(outcome: &Outcome, formats: Formats) -> String {
    let mut text = String::new();
    if formats.normal {
        if outcome.default_run {
            text.push_str(&format!(
                "isonvme-bench: no arguments, so the default job runs:\n  {}\n\n",
                config::default_command_line()
            ));
        }
        text.push_str(&output::normal(outcome));
    }
    for plus in [false, true] {
        if (plus && formats.json_plus) || (!plus && formats.json && !formats.json_plus) {
            let value = output::json(outcome, plus);
            text.push_str(&serde_json::to_string_pretty(&value).expect("JSON serialises"));
            text.push('\n');
        }
    }
    text
}

/// Writes `text` to `--output` or stdout.
pub fn emit(config: &Config, text: &str) -> Result<(), RunError> {
    let failure = |message: String| RunError {
        usage: false,
        message,
    };
    match &config.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| failure(format!("writing {}: {e}", path.display()))),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| failure(format!("writing the report: {e}")))
        }
    }
}

fn tell_errors(outcome: &Outcome) {
    for job in &outcome.jobs {
        if let Some(error) = &job.error {
            eprintln!(
                "isonvme-bench: job `{}`/{}: {error}",
                job.options.name, job.jobnum
            );
        }
        if let Some(verify) = job.verify.as_ref().filter(|v| v.errors > 0) {
            for message in &verify.messages {
                eprintln!("{message}");
            }
            eprintln!(
                "isonvme-bench: job `{}`/{}: verify found {} bad blocks of {} checked",
                job.options.name, job.jobnum, verify.errors, verify.checked
            );
        }
    }
}

/// Checks before a run that the report and the SVG can be written where
/// asked, so a bad path does not cost the run.
pub fn check_outputs(config: &Config) -> Result<(), RunError> {
    let usage = |message: String| RunError {
        usage: true,
        message,
    };
    if let Some(path) = &config.output {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| usage(format!("--output={}: {e}", path.display())))?;
    }
    if let Some(path) = &config.latency_svg {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            return Err(usage(format!(
                "--latency-svg={}: directory {} does not exist",
                path.display(),
                parent.display()
            )));
        }
        if path.is_dir() {
            return Err(usage(format!(
                "--latency-svg={}: is a directory; give a file name",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Runs a parsed configuration: the jobs (or the comparison), the report,
/// the SVG. `Ok(false)` when a job failed.
pub fn run_config(config: &Config) -> Result<bool, RunError> {
    check_outputs(config)?;
    if !config.compare.is_empty() {
        return compare::run(config);
    }
    let outcome = run::execute(config, &[])?;
    tell_errors(&outcome);
    emit(config, &render(&outcome, config.formats))?;
    if let Some(path) = &config.latency_svg {
        svg::write(path, &[("", &outcome)])?;
    }
    Ok(outcome.ok())
}

/// Runs `config` with one side's overrides (for [`compare`]).
pub fn run_side(config: &Config, overrides: &[config::RawOption]) -> Result<Outcome, RunError> {
    let outcome = run::execute(config, overrides)?;
    tell_errors(&outcome);
    Ok(outcome)
}
