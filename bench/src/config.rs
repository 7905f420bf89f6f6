//! The command line and fio job files, turned into jobs.
//!
//! As in fio: job files are INI (`[global]` then one section per job, the
//! same keys as the command line, bare keys for flags, `${VAR}` from the
//! environment); a `;` or `#` anywhere on a line starts a comment, as fio's
//! parser has it (so `numjobs=4 ; four readers` is `numjobs=4`). On the
//! command line each `--name=` starts a job and the options after it belong
//! to that job. Options on the command line before the first `--name` are
//! global: they apply to every job, and override what job files say (so
//! `--runtime=1 job.fio` shortens a job file's run, and `--ioengine=isonvme
//! --filename=sim job.fio` runs a libaio job file on isonvme). fio itself
//! lets a job file's own value win over a command-line one; this is the one
//! place isonvme-bench differs. Each option is taken once, its last value
//! counting, before any value is checked: an option a later layer replaces
//! is never validated. Without any `--name` or job file, the options make
//! one job. Errors in a job file's values name the file and line.

use std::path::{Path, PathBuf};

use crate::options::{self, JobOptions, OptionError};

/// A key and its value as written (`None`: a bare flag).
pub type RawOption = (String, Option<String>);

/// One INI section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name in brackets.
    pub name: String,
    /// Its options in order.
    pub options: Vec<RawOption>,
    /// Where each option was written (`file:line`), in the same order.
    pub origins: Vec<String>,
}

/// A job file line without its comment: fio ends a line at its first `;`
/// or `#` wherever it is (its `strip_blank_end`), then trims it.
fn strip_comment(line: &str) -> &str {
    let end = line.find([';', '#']).unwrap_or(line.len());
    line[..end].trim()
}

/// Parses a fio job file's text; `origin` names it in errors.
pub fn parse_job_file(text: &str, origin: &str) -> Result<Vec<Section>, OptionError> {
    let mut sections: Vec<Section> = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = strip_comment(raw_line);
        if line.is_empty() {
            continue;
        }
        let at = || format!("{origin}:{line_no}");
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| {
                OptionError(format!("{}: section header `{line}` lacks its `]`", at()))
            })?;
            let name = name.trim();
            if name.is_empty() {
                return Err(OptionError(format!("{}: empty section name", at())));
            }
            sections.push(Section {
                name: name.to_owned(),
                options: Vec::new(),
                origins: Vec::new(),
            });
            continue;
        }
        if line.starts_with("include ") {
            return Err(OptionError(format!(
                "{}: `include` is not supported: put the options in this file",
                at()
            )));
        }
        let Some(section) = sections.last_mut() else {
            return Err(OptionError(format!(
                "{}: `{line}` comes before any [section]",
                at()
            )));
        };
        let line = expand_env(line).map_err(|e| OptionError(format!("{}: {e}", at())))?;
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key.trim().to_owned(), Some(value.trim().to_owned())),
            None => (line.trim().to_owned(), None),
        };
        if options::canonical(&key).is_none() {
            return Err(OptionError(format!(
                "{}: {}",
                at(),
                options::unsupported(&key)
            )));
        }
        section.options.push((key, value));
        section.origins.push(at());
    }
    Ok(sections)
}

/// Replaces `${NAME}` with the environment variable's value.
fn expand_env(line: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in `{line}`"))?;
        let name = &after[..end];
        let value = std::env::var(name)
            .map_err(|_| format!("environment variable `{name}` (in `{line}`) is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Output formats asked for (fio accepts a comma-separated list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Formats {
    /// fio's human-readable report.
    pub normal: bool,
    /// fio's JSON.
    pub json: bool,
    /// fio's JSON with latency bins.
    pub json_plus: bool,
}

impl Formats {
    fn parse(text: &str) -> Result<Formats, OptionError> {
        let mut formats = Formats::default();
        for part in text.split(',') {
            match part.trim() {
                "normal" => formats.normal = true,
                "json" => formats.json = true,
                "json+" => formats.json_plus = true,
                "terse" | "minimal" => {
                    return Err(OptionError(format!(
                        "--output-format={part}: the terse format is not supported (use normal, json or json+)"
                    )))
                }
                other => {
                    return Err(OptionError(format!(
                        "--output-format={other}: expected normal, json or json+"
                    )))
                }
            }
        }
        Ok(formats)
    }
}

/// `--eta=`: when to show the live progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eta {
    /// When stdout is a terminal.
    #[default]
    Auto,
    /// Always (even when stdout is not a terminal).
    Always,
    /// Never.
    Never,
}

/// Everything a run needs from the command line.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Option layers per job, applied in order to the defaults.
    pub recipes: Vec<Vec<RawOption>>,
    /// Per recipe, where each option came from (`file:line`; `None`: the
    /// command line or a default), for error messages. May be shorter than
    /// its recipe.
    pub origins: Vec<Vec<Option<String>>>,
    /// Global options (the command line's and job files'), for the JSON.
    pub global_options: Vec<(String, String)>,
    /// Output formats.
    pub formats: Formats,
    /// `--output=`.
    pub output: Option<PathBuf>,
    /// `--latency-svg=`.
    pub latency_svg: Option<PathBuf>,
    /// `--compare`: two override lists.
    pub compare: Vec<Vec<RawOption>>,
    /// `--eta=`.
    pub eta: Eta,
    /// Run with no arguments: the default job.
    pub default_run: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run the jobs.
    Run(Config),
    /// Print this text and exit successfully.
    Print(String),
}

/// The default job (no arguments): 4 KiB random reads at QD32 for 3 s after
/// a 0.5 s ramp, on the simulated controller (an empty value: a bare flag).
pub const DEFAULT_JOB: &[(&str, &str)] = &[
    ("name", "randread"),
    ("ioengine", "isonvme"),
    ("filename", "sim"),
    ("rw", "randread"),
    ("bs", "4k"),
    ("iodepth", "32"),
    ("time_based", ""),
    ("runtime", "3s"),
    ("ramp_time", "500ms"),
];

/// The default job with `overrides` applied: an option given replaces the
/// default's. A `filename=` without `ioengine=` lets the engine follow the
/// file, a kernel `ioengine=` without `filename=` needs one of its own, and
/// an `rw=` names the job after its workload, as without a default.
fn default_job_with(overrides: &[RawOption]) -> Vec<RawOption> {
    let canonical = |key: &str| options::canonical(key).map(|spec| spec.name);
    let value_of = |key: &str| {
        overrides
            .iter()
            .rev()
            .find(|(k, _)| canonical(k) == canonical(key))
            .map(|(_, v)| v.clone().unwrap_or_default())
    };
    let given = |key: &str| value_of(key).is_some();
    let kernel_engine = value_of("ioengine").is_some_and(|engine| engine != "isonvme");
    let mut recipe: Vec<RawOption> = DEFAULT_JOB
        .iter()
        .filter(|(key, _)| !given(key))
        .filter(|(key, _)| !(*key == "ioengine" && given("filename")))
        .filter(|(key, _)| !(*key == "filename" && kernel_engine))
        .filter(|(key, _)| !(*key == "name" && given("rw")))
        .map(|(k, v)| ((*k).to_owned(), (!v.is_empty()).then(|| (*v).to_owned())))
        .collect();
    recipe.extend(overrides.iter().cloned());
    recipe
}

/// The default job as a command line.
pub fn default_command_line() -> String {
    let mut line = String::from("isonvme-bench");
    for (key, value) in DEFAULT_JOB {
        if value.is_empty() {
            line.push_str(&format!(" --{key}"));
        } else {
            line.push_str(&format!(" --{key}={value}"));
        }
    }
    line
}

const TOOL_OPTIONS: &[(&str, &str)] = &[
    ("output-format", "normal, json or json+ (comma-separated for several)"),
    ("output", "write the report to this file instead of stdout"),
    ("latency-svg", "write a latency histogram and percentile plot (SVG) to this file"),
    ("compare", "given twice: run the jobs with each list of space-separated key=value overrides, back to back, and print the ratio table"),
    ("cmdhelp", "the help of one job option (--cmdhelp=bs)"),
    ("eta", "auto (progress line when stdout is a terminal), always or never"),
    ("help", "this text"),
    ("version", "the version"),
];

/// `--help`.
pub fn help() -> String {
    let mut text = String::new();
    text.push_str(
        "isonvme-bench: a fio-like benchmark for isonvme, io_uring and psync\n\n\
         usage: isonvme-bench [--tool-option=VALUE...] [--job-option=VALUE...] [--name=JOB --job-option=VALUE...]... [JOBFILE...]\n\n\
         With no arguments it runs the default job:\n  ",
    );
    text.push_str(&default_command_line());
    text.push_str(
        "\nJob options without a job file or --name modify that job (--iodepth=1: the\n\
         default job at QD1); a job file or --name starts from fio's defaults instead.",
    );
    text.push_str("\n\nTool options:\n");
    for (name, help) in TOOL_OPTIONS {
        text.push_str(&format!("  --{name:<24} {help}\n"));
    }
    text.push_str("\nJob options (fio's names; in job files without the dashes):\n");
    for spec in options::OPTIONS {
        let mut names = spec.name.to_owned();
        for alias in spec.aliases {
            names.push_str(&format!("|{alias}"));
        }
        text.push_str(&format!("  --{names:<24} {}\n", spec.help));
    }
    text.push_str(
        "\nJob threads are pinned (unlike fio's default): without cpus_allowed, one CPU each,\n\
         isolated CPUs first; isonvme threads use the handle of the CPU they run on.\n\
         Simulator options go in the filename: sim,size=4G,latency=20us,iops=500000 (see\n\
         docs/architecture.md). Exit status: 0 ok, 1 a job failed or verify found bad data,\n\
         2 bad options.\n\
         \nExamples:\n  isonvme-bench --rw=randread --bs=4k --iodepth=1 --runtime=5 --time_based\n  \
         isonvme-bench --ioengine=io_uring --filename=/dev/nvme0n1 --rw=randread --iodepth=32 --runtime=10 --time_based\n  \
         isonvme-bench --runtime=2 --time_based --compare completion=interrupt --compare completion=poll\n  \
         isonvme-bench --output-format=json+ --output=run.json job.fio\n",
    );
    text
}

/// Parses the command line (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<Command, OptionError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut config = Config {
        formats: Formats {
            normal: true,
            ..Formats::default()
        },
        ..Config::default()
    };
    if args.is_empty() {
        config.default_run = true;
        config.recipes.push(
            DEFAULT_JOB
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (!v.is_empty()).then(|| (*v).to_owned())))
                .collect(),
        );
        return Ok(Command::Run(config));
    }
    let mut command_global: Vec<RawOption> = Vec::new();
    let mut command_jobs: Vec<Vec<RawOption>> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let Some(option) = arg.strip_prefix("--") else {
            if arg == "-h" {
                return Ok(Command::Print(help()));
            }
            if arg.starts_with('-') && arg.len() > 1 {
                return Err(OptionError(format!(
                    "unsupported option `{arg}` (options are written --name=value)"
                )));
            }
            files.push(PathBuf::from(arg));
            continue;
        };
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
            None => (option.to_owned(), None),
        };
        // Tool options may also take their value as the next argument.
        let mut tool_value = |what: &str| -> Result<String, OptionError> {
            match &value {
                Some(value) => Ok(value.clone()),
                None => iter
                    .next()
                    .ok_or_else(|| OptionError(format!("--{key} needs {what}"))),
            }
        };
        match key.as_str() {
            "help" => return Ok(Command::Print(help())),
            "version" => {
                return Ok(Command::Print(format!(
                    "isonvme-bench {}\n",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            "cmdhelp" => {
                let text = match &value {
                    Some(name) => match options::canonical(name) {
                        Some(spec) => format!("{}: {}\n", spec.name, spec.help),
                        None => return Err(options::unsupported(name)),
                    },
                    None => help(),
                };
                return Ok(Command::Print(text));
            }
            "output-format" => {
                config.formats = Formats::parse(&tool_value("a format")?)?;
            }
            "output" => config.output = Some(PathBuf::from(tool_value("a file name")?)),
            "latency-svg" => {
                config.latency_svg = Some(PathBuf::from(tool_value("a file name")?));
            }
            "eta" => {
                config.eta = match tool_value("auto, always or never")?.as_str() {
                    "auto" => Eta::Auto,
                    "always" => Eta::Always,
                    "never" => Eta::Never,
                    other => {
                        return Err(OptionError(format!(
                            "--eta={other}: expected auto, always or never"
                        )))
                    }
                }
            }
            "compare" => {
                let text = tool_value("a list of key=value overrides")?;
                let mut overrides = Vec::new();
                for word in text.split_whitespace() {
                    let (k, v) = match word.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (word.to_owned(), None),
                    };
                    if options::canonical(&k).is_none() {
                        return Err(OptionError(format!(
                            "--compare {text}: {}",
                            options::unsupported(&k)
                        )));
                    }
                    overrides.push((k, v));
                }
                if overrides.is_empty() {
                    return Err(OptionError(
                        "--compare needs key=value overrides, e.g. --compare completion=poll"
                            .into(),
                    ));
                }
                config.compare.push(overrides);
            }
            "name" => {
                let name = value
                    .clone()
                    .ok_or_else(|| OptionError("--name needs a value (--name=JOB)".into()))?;
                command_jobs.push(vec![("name".to_owned(), Some(name))]);
            }
            _ => {
                if options::canonical(&key).is_none() {
                    return Err(options::unsupported(&key));
                }
                match command_jobs.last_mut() {
                    Some(job) => job.push((key, value)),
                    None => command_global.push((key, value)),
                }
            }
        }
    }
    if !config.compare.is_empty() && config.compare.len() != 2 {
        return Err(OptionError(format!(
            "--compare must be given exactly twice (the two sides), got {}",
            config.compare.len()
        )));
    }
    if !config.formats.normal && !config.formats.json && !config.formats.json_plus {
        config.formats.normal = true;
    }
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| OptionError(format!("reading job file {}: {e}", file.display())))?;
        let sections = parse_job_file(&text, &file.display().to_string())?;
        add_file_jobs(&mut config, file, sections, &command_global)?;
    }
    for (key, value) in &command_global {
        config
            .global_options
            .push((key.clone(), value.clone().unwrap_or_else(|| "1".into())));
    }
    for job in command_jobs {
        let mut recipe = command_global.clone();
        recipe.extend(job);
        config.recipes.push(recipe);
    }
    if config.recipes.is_empty() {
        if files.is_empty() {
            // Options alone modify the default job (`./run-bench
            // --iodepth=1` is the default job at QD1); a job file or
            // `--name` starts from fio's defaults instead.
            config.default_run = true;
            config.recipes.push(default_job_with(&command_global));
        } else {
            return Err(OptionError("the job files define no jobs".into()));
        }
    }
    Ok(Command::Run(config))
}

fn add_file_jobs(
    config: &mut Config,
    file: &Path,
    sections: Vec<Section>,
    command_global: &[RawOption],
) -> Result<(), OptionError> {
    let mut global: Vec<RawOption> = Vec::new();
    let mut global_origins: Vec<Option<String>> = Vec::new();
    let mut jobs = 0;
    for section in sections {
        if section.name == "global" {
            for (key, value) in &section.options {
                config
                    .global_options
                    .push((key.clone(), value.clone().unwrap_or_else(|| "1".into())));
            }
            global.extend(section.options);
            global_origins.extend(section.origins.into_iter().map(Some));
            continue;
        }
        let mut recipe = vec![("name".to_owned(), Some(section.name.clone()))];
        let mut origins = vec![None];
        recipe.extend(global.iter().cloned());
        origins.extend(global_origins.iter().cloned());
        recipe.extend(section.options);
        origins.extend(section.origins.into_iter().map(Some));
        recipe.extend(command_global.iter().cloned());
        config.recipes.push(recipe);
        config.origins.push(origins);
        jobs += 1;
    }
    if jobs == 0 {
        return Err(OptionError(format!(
            "job file {} has no job section (only [global])",
            file.display()
        )));
    }
    Ok(())
}

/// Applies a recipe (and overrides) to the defaults.
pub fn resolve(recipe: &[RawOption], overrides: &[RawOption]) -> Result<JobOptions, OptionError> {
    resolve_with_origins(recipe, &[], overrides)
}

/// Applies a recipe (and overrides) to the defaults: each option once, with
/// its last value (what a later layer replaces is never checked), errors
/// prefixed with where the value was written.
pub fn resolve_with_origins(
    recipe: &[RawOption],
    origins: &[Option<String>],
    overrides: &[RawOption],
) -> Result<JobOptions, OptionError> {
    let all: Vec<(&RawOption, Option<&String>)> = recipe
        .iter()
        .enumerate()
        .map(|(index, option)| (option, origins.get(index).and_then(Option::as_ref)))
        .chain(overrides.iter().map(|option| (option, None)))
        .collect();
    let key_of =
        |key: &str| options::canonical(key).map_or(key.to_owned(), |spec| spec.name.to_owned());
    let mut job = JobOptions::default();
    for (index, ((key, value), origin)) in all.iter().enumerate() {
        let replaced = all[index + 1..]
            .iter()
            .any(|((later, _), _)| key_of(later) == key_of(key));
        if replaced {
            continue;
        }
        job.set(key, value.as_deref())
            .map_err(|error| match origin {
                Some(origin) => OptionError(format!("{origin}: {}", error.0)),
                None => error,
            })?;
    }
    if job.name.is_empty() {
        job.name = job.rw.name().to_owned();
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        std::env::set_var("ISONVME_BENCH_TEST_BS", "8k");
        assert_eq!(expand_env("bs=${ISONVME_BENCH_TEST_BS}").unwrap(), "bs=8k");
        assert!(expand_env("bs=${ISONVME_BENCH_NOT_SET_ANYWHERE}").is_err());
    }
}
