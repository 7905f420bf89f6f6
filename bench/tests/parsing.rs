//! Options on the command line and in fio job files, and the errors for
//! options and values the benchmark does not take.

use std::time::Duration;

use isonvme::runtime::CompletionMode;
use isonvme_bench::config::{self, parse_args, parse_job_file, Command, Config};
use isonvme_bench::options::{CpusPolicy, EngineKind, JobOptions, Rw, VerifyKind};
use isonvme_bench::units::SizeSpec;

fn config(args: &[&str]) -> Config {
    match parse_args(args) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Print(_)) => panic!("{args:?} printed instead of running"),
        Err(error) => panic!("{args:?}: {error}"),
    }
}

fn jobs(args: &[&str]) -> Vec<JobOptions> {
    let config = config(args);
    config
        .recipes
        .iter()
        .map(|recipe| config::resolve(recipe, &[]).unwrap())
        .collect()
}

fn error(args: &[&str]) -> String {
    match parse_args(args) {
        Err(error) => error.to_string(),
        Ok(Command::Run(config)) => {
            // Some errors only show when the job is resolved and validated.
            for (index, recipe) in config.recipes.iter().enumerate() {
                let origins = config.origins.get(index).map_or(&[][..], Vec::as_slice);
                match config::resolve_with_origins(recipe, origins, &[]) {
                    Err(error) => return error.to_string(),
                    Ok(job) => {
                        if let Err(error) = job.validate() {
                            return error.to_string();
                        }
                    }
                }
            }
            panic!("{args:?} was accepted")
        }
        Ok(Command::Print(_)) => panic!("{args:?} printed"),
    }
}

#[test]
fn fio_options_on_the_command_line() {
    let jobs = jobs(&[
        "--rw=randrw",
        "--rwmixread=70",
        "--bs=8k",
        "--iodepth=16",
        "--numjobs=2",
        "--cpus_allowed=0-1",
        "--cpus_allowed_policy=split",
        "--runtime=500ms",
        "--time_based",
        "--ramp_time=1",
        "--size=64m",
        "--offset=1m",
        "--filename=sim,size=128M",
        "--norandommap",
        "--randrepeat=0",
        "--rate_iops=1000",
        "--verify=crc32c",
        "--percentile_list=50:99:99.9",
        "--group_reporting",
        "--completion=poll",
        "--isolated=1",
    ]);
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        job.name, "randrw",
        "a job without --name is named after its workload"
    );
    assert_eq!(job.rw, Rw::RandRw);
    assert_eq!(job.rwmixread, 70);
    assert_eq!(job.bs, 8192);
    assert_eq!(job.iodepth, 16);
    assert_eq!(job.numjobs, 2);
    assert_eq!(job.cpus_allowed.as_ref().unwrap().to_string(), "0-1");
    assert_eq!(job.cpus_allowed_policy, CpusPolicy::Split);
    assert_eq!(job.runtime, Some(Duration::from_millis(500)));
    assert!(job.time_based);
    assert_eq!(job.ramp_time, Duration::from_secs(1));
    assert_eq!(job.size, Some(SizeSpec::Bytes(64 << 20)));
    assert_eq!(job.offset, SizeSpec::Bytes(1 << 20));
    assert_eq!(job.filename.as_deref(), Some("sim,size=128M"));
    assert_eq!(job.engine(), EngineKind::Isonvme);
    assert!(job.norandommap);
    assert!(!job.randrepeat);
    assert_eq!(job.rate_iops, Some(1000));
    assert_eq!(job.verify, Some(VerifyKind::Crc32c));
    assert_eq!(job.percentile_list, vec![50.0, 99.0, 99.9]);
    assert!(job.group_reporting);
    assert_eq!(job.completion, CompletionMode::Poll);
    assert_eq!(job.isolated.as_ref().unwrap().to_string(), "1");
    job.validate().unwrap();
}

#[test]
fn aliases_and_fio_defaults() {
    let job = &jobs(&["--readwrite=readwrite", "--blocksize=16k", "--timeout=2"])[0];
    assert_eq!(job.rw, Rw::ReadWrite);
    assert_eq!(job.bs, 16384);
    assert_eq!(job.runtime, Some(Duration::from_secs(2)));
    // A --name starts from fio's defaults.
    let job = &jobs(&["--name=plain", "--rw=read"])[0];
    assert_eq!((job.bs, job.iodepth, job.numjobs), (4096, 1, 1));
    assert_eq!(job.rwmixread, 50);
    assert!(job.randrepeat && !job.time_based && !job.norandommap);
    assert_eq!(
        job.engine(),
        EngineKind::Isonvme,
        "no filename: the simulator"
    );
    let job = &jobs(&["--filename=/tmp/somefile", "--size=1m"])[0];
    assert_eq!(
        job.engine(),
        EngineKind::Psync,
        "a path: fio's default engine"
    );
    let job = &jobs(&["--rwmixwrite=30", "--rw=randrw"])[0];
    assert_eq!(job.rwmixread, 70);
}

#[test]
fn each_name_starts_a_job_and_earlier_options_are_global() {
    let jobs = jobs(&[
        "--bs=8k",
        "--iodepth=4",
        "--name=reader",
        "--rw=randread",
        "--name=writer",
        "--rw=write",
        "--bs=16k",
    ]);
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        (jobs[0].name.as_str(), jobs[0].rw, jobs[0].bs),
        ("reader", Rw::RandRead, 8192)
    );
    assert_eq!(
        (jobs[1].name.as_str(), jobs[1].rw, jobs[1].bs),
        ("writer", Rw::Write, 16384)
    );
    assert_eq!((jobs[0].iodepth, jobs[1].iodepth), (4, 4));
}

#[test]
fn no_arguments_is_the_default_job() {
    let config = config(&[]);
    assert!(config.default_run);
    let job = config::resolve(&config.recipes[0], &[]).unwrap();
    assert_eq!(job.rw, Rw::RandRead);
    assert_eq!(job.bs, 4096);
    assert_eq!(job.iodepth, 32);
    assert_eq!(job.engine(), EngineKind::Isonvme);
    assert_eq!(job.target(), "sim");
    assert!(job.time_based);
    assert_eq!(job.runtime, Some(Duration::from_secs(3)));
    assert_eq!(job.ramp_time, Duration::from_millis(500));
    assert!(config::default_command_line().contains("--iodepth=32"));
}

#[test]
fn unsupported_options_are_errors_naming_them() {
    let message = error(&["--iodepht=4"]);
    assert!(
        message.contains("`iodepht`") && message.contains("iodepth"),
        "{message}"
    );
    let message = error(&["--stonewall"]);
    assert!(
        message.contains("`stonewall`") && message.contains("does not support"),
        "{message}"
    );
    let message = error(&["--frobnicate=1"]);
    assert!(message.contains("`frobnicate`"), "{message}");
    let message = error(&["-x"]);
    assert!(message.contains("`-x`"), "{message}");
    let message = error(&["--name=a", "--zonemode=zbd"]);
    assert!(message.contains("`zonemode`"), "{message}");
}

#[test]
fn bad_values_name_their_option() {
    for (args, needle) in [
        (&["--rw=sideways"][..], "rw=sideways"),
        (&["--rw=randread:8"], "rw=randread:8"),
        (&["--bs=1000"], "bs=1000"),
        (&["--bs=4k,8k"], "bs=4k,8k"),
        (&["--iodepth=0"], "iodepth=0"),
        (&["--rwmixread=101"], "rwmixread=101"),
        (&["--runtime=soon"], "runtime=soon"),
        (&["--size=0"], "size=0"),
        (&["--ioengine=windowsaio"], "ioengine=windowsaio"),
        (&["--verify=md5"], "verify=md5"),
        (&["--cpus_allowed=3-1"], "cpus_allowed=3-1"),
        (&["--cpus_allowed_policy=both"], "cpus_allowed_policy=both"),
        (&["--completion=sometimes"], "completion=sometimes"),
        (&["--percentile_list=50:200"], "percentile_list=50:200"),
        (&["--rw"], "rw"),
        (&["--output-format=terse"], "terse"),
        (&["--eta=sometimes"], "eta=sometimes"),
    ] {
        let message = error(args);
        assert!(message.contains(needle), "{args:?}: {message}");
    }
}

#[test]
fn cross_option_checks() {
    let message = error(&["--ioengine=psync", "--rw=read"]);
    assert!(message.contains("needs filename="), "{message}");
    let message = error(&["--name=x", "--ioengine=psync", "--rw=read"]);
    assert!(message.contains("needs filename="), "{message}");
    let message = error(&[
        "--ioengine=io_uring",
        "--filename=/tmp/x",
        "--completion=poll",
    ]);
    assert!(
        message.contains("completion= applies to ioengine=isonvme"),
        "{message}"
    );
    let message = error(&["--isolated=1", "--housekeeping=0-1"]);
    assert!(message.contains("overlap"), "{message}");
    let message = error(&["--name=x", "--time_based"]);
    assert!(message.contains("time_based needs runtime="), "{message}");
    let message = error(&["--ioengine=isonvme", "--filename=/dev/nvme0n1"]);
    assert!(message.contains("filename=/dev/nvme0n1"), "{message}");
    // direct=0 means nothing to isonvme: a note, not an error.
    let job = &jobs(&["--direct=0"])[0];
    let notes = job.validate().unwrap();
    assert!(
        notes.iter().any(|n| n.contains("direct=0 has no meaning")),
        "{notes:?}"
    );
    // libaio and posixaio run on io_uring, and say so.
    let job = &jobs(&["--ioengine=libaio", "--filename=/tmp/x"])[0];
    assert_eq!(job.engine(), EngineKind::IoUring);
    let notes = job.validate().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("ioengine=libaio runs on io_uring")),
        "{notes:?}"
    );
    // psync runs at depth 1 and says so rather than failing.
    let job = &jobs(&["--ioengine=psync", "--filename=/tmp/x", "--iodepth=8"])[0];
    let notes = job.validate().unwrap();
    assert!(
        notes[0].contains("iodepth=8 runs as iodepth=1"),
        "{notes:?}"
    );
}

#[test]
fn tool_options() {
    let config = config(&[
        "--output-format=normal,json+",
        "--output",
        "/tmp/report.txt",
        "--latency-svg=/tmp/lat.svg",
        "--eta=never",
        "--compare",
        "completion=interrupt",
        "--compare=completion=poll iodepth=1",
    ]);
    assert!(config.formats.normal && config.formats.json_plus && !config.formats.json);
    assert_eq!(
        config.output.as_deref(),
        Some(std::path::Path::new("/tmp/report.txt"))
    );
    assert!(config.latency_svg.is_some());
    assert_eq!(config.eta, config::Eta::Never);
    assert_eq!(config.compare.len(), 2);
    assert_eq!(config.compare[1].len(), 2);
    let message = error(&["--compare=completion=poll"]);
    assert!(message.contains("exactly twice"), "{message}");
    let message = error(&["--compare=completon=poll", "--compare=completion=poll"]);
    assert!(message.contains("`completon`"), "{message}");
    assert!(
        matches!(parse_args(["--help"]), Ok(Command::Print(text)) if text.contains("cpus_allowed_policy"))
    );
    assert!(
        matches!(parse_args(["--cmdhelp=bs"]), Ok(Command::Print(text)) if text.starts_with("bs:"))
    );
}

const JOB_FILE: &str = "\
; fio-style job file
[global]
ioengine=isonvme
filename=sim,size=64M
bs=4k
# a bare key is a flag
time_based
runtime=${ISONVME_BENCH_TEST_RUNTIME}
group_reporting

[seq-reader]
rw=read
iodepth=4

[rand-writer]
rw=randwrite
bs=8k
numjobs=2
";

#[test]
fn job_files_have_global_and_job_sections() {
    std::env::set_var("ISONVME_BENCH_TEST_RUNTIME", "2");
    let sections = parse_job_file(JOB_FILE, "test.fio").unwrap();
    assert_eq!(sections.len(), 3);
    assert_eq!(sections[0].name, "global");
    assert!(sections[0].options.contains(&("time_based".into(), None)));
    assert!(sections[0]
        .options
        .contains(&("runtime".into(), Some("2".into()))));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.fio");
    std::fs::write(&path, JOB_FILE).unwrap();
    let path = path.to_str().unwrap();
    let jobs = jobs(&[path]);
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        (jobs[0].name.as_str(), jobs[0].rw, jobs[0].bs),
        ("seq-reader", Rw::Read, 4096)
    );
    assert_eq!(jobs[0].iodepth, 4);
    assert_eq!(
        (jobs[1].name.as_str(), jobs[1].rw, jobs[1].bs),
        ("rand-writer", Rw::RandWrite, 8192)
    );
    assert_eq!(jobs[1].numjobs, 2);
    for job in &jobs {
        assert!(job.time_based && job.group_reporting);
        assert_eq!(job.runtime, Some(Duration::from_secs(2)));
        assert_eq!(job.target(), "sim,size=64M");
    }
    // Command-line globals override the file.
    let jobs = self::jobs(&["--runtime=250ms", path]);
    assert!(jobs
        .iter()
        .all(|j| j.runtime == Some(Duration::from_millis(250))));
    let config = config(&[path]);
    assert!(config
        .global_options
        .contains(&("filename".into(), "sim,size=64M".into())));
}

#[test]
fn job_file_errors_say_where() {
    let message = parse_job_file("[a]\nrw=read\nbogus_key=1\n", "jobs.fio")
        .unwrap_err()
        .0;
    assert!(
        message.starts_with("jobs.fio:3:") && message.contains("`bogus_key`"),
        "{message}"
    );
    let message = parse_job_file("rw=read\n", "jobs.fio").unwrap_err().0;
    assert!(message.contains("before any [section]"), "{message}");
    let message = parse_job_file("[a\n", "jobs.fio").unwrap_err().0;
    assert!(message.contains("lacks its `]`"), "{message}");
    let message = parse_job_file("[a]\ninclude other.fio\n", "jobs.fio")
        .unwrap_err()
        .0;
    assert!(message.contains("include"), "{message}");
    // A bad value in a job file names the option when resolved.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.fio");
    std::fs::write(&path, "[job]\nrw=sideways\n").unwrap();
    let message = error(&[path.to_str().unwrap()]);
    assert!(message.contains("rw=sideways"), "{message}");
    std::fs::write(&path, "[global]\nrw=read\n").unwrap();
    let message = error(&[path.to_str().unwrap()]);
    assert!(message.contains("no job section"), "{message}");
    let message = error(&["/nonexistent/jobs.fio"]);
    assert!(message.contains("/nonexistent/jobs.fio"), "{message}");
}

#[test]
fn options_alone_modify_the_default_job() {
    // The README's example: the default job (4 KiB random reads on the
    // simulator, time based) at QD1.
    let job = &jobs(&["--iodepth=1"])[0];
    assert_eq!(job.rw, Rw::RandRead);
    assert_eq!((job.bs, job.iodepth), (4096, 1));
    assert!(job.time_based);
    assert_eq!(job.runtime, Some(Duration::from_secs(3)));
    assert_eq!(job.filename.as_deref(), Some("sim"));
    assert_eq!(job.engine(), EngineKind::Isonvme);
    assert_eq!(job.name, "randread");
    // A file instead of the simulator: the engine follows the file.
    let job = &jobs(&["--filename=/tmp/somefile", "--size=1m"])[0];
    assert_ne!(job.engine(), EngineKind::Isonvme);
    // A job file or --name starts from fio's defaults.
    let job = &jobs(&["--name=mine", "--filename=sim"])[0];
    assert_eq!((job.rw, job.iodepth), (Rw::Read, 1));
    assert!(config(&["--iodepth=1"]).default_run);
    assert!(!config(&["--name=mine", "--filename=sim"]).default_run);
}

#[test]
fn job_files_take_comments_anywhere_on_a_line_as_fio_does() {
    let sections = parse_job_file(
        "[global]\nnumjobs=4 ; four readers\nfilename=sim ; c\n\n[reader] # a job\nrw=randread#inline\n",
        "job.fio",
    )
    .unwrap();
    assert_eq!(
        sections[0].options[0],
        ("numjobs".to_owned(), Some("4".to_owned()))
    );
    assert_eq!(
        sections[0].options[1],
        ("filename".to_owned(), Some("sim".to_owned()))
    );
    assert_eq!(sections[1].name, "reader");
    assert_eq!(
        sections[1].options[0],
        ("rw".to_owned(), Some("randread".to_owned()))
    );
    assert_eq!(sections[1].origins[0], "job.fio:6");
}

#[test]
fn command_line_options_replace_a_job_files_before_its_values_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aio.fio");
    std::fs::write(
        &file,
        "[global]\nioengine=windowsaio\nfilename=/dev/sdz\n[job]\nrw=randread\nbs=4k\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    // The file's engine would be refused; the command line replaces it
    // before it is looked at.
    let jobs = jobs(&["--ioengine=isonvme", "--filename=sim", path]);
    assert_eq!(jobs[0].engine(), EngineKind::Isonvme);
    assert_eq!(jobs[0].target(), "sim");
    // Without the override the value error names the file and line.
    let message = error(&[path]);
    assert!(message.contains(&format!("{path}:2")), "{message}");
    assert!(message.contains("ioengine=windowsaio"), "{message}");
}
