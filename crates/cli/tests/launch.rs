//! `rustspeed launch` through the binary: the printed mpirun command (`--dry-run`), hostfile and selection errors,
//! running a stand-in mpirun (a shell script that records its arguments), and the per-rank `--rank-env` shim.
//! None of these needs MPI; the one test that runs the real OpenMPI is `#[ignore]`d (run it with
//! `cargo test -p rustspeed --test launch -- --ignored` where OpenMPI is installed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEFAULT_HOSTFILE: &str = "/job/hostfile";

struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("rustspeed-launch-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.join(name);
        fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// An executable shell script standing in for mpirun: it writes its arguments, one per line, to
    /// `<script>.args`, prints a line and exits with `code`.
    fn fake_mpirun(&self, code: i32) -> String {
        let path = self.write(
            &format!("mpirun-exit{code}"),
            &format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$0.args\"\necho fake-mpirun-ran\nexit {code}\n"),
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        path
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn rustspeed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rustspeed")).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "rustspeed failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a run that must fail (non-zero exit, an `error:` line, no panic).
fn failure(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure, got success: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("error: ") && !err.contains("panicked"), "{err}");
    err
}

/// The path each rank runs as its shim: the binary itself, as the OS reports it (symlinks resolved).
fn shim() -> String {
    fs::canonicalize(env!("CARGO_BIN_EXE_rustspeed")).unwrap().to_str().unwrap().to_string()
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// The mpirun argv expected for `hosts` (name, ranks), written out from the documented command shape.
fn expected_argv(mpirun: &str, hosts: &[(&str, usize)], master: &str, port: u16, user: &str) -> Vec<String> {
    let world: usize = hosts.iter().map(|h| h.1).sum();
    let host_list: Vec<String> = hosts.iter().map(|(h, k)| format!("{h}:{k}")).collect();
    let layout: Vec<String> = hosts.iter().map(|(_, k)| k.to_string()).collect();
    let mut argv = words(&format!(
        "{mpirun} -n {world} --host {} --map-by slot --bind-to none -x RUSTSPEED_BACKEND=mpi -x MASTER_ADDR={master} \
         -x MASTER_PORT={port} -x RUSTSPEED_RANKS_PER_NODE={} {} launch --rank-env --",
        host_list.join(","),
        layout.join(","),
        shim()
    ));
    argv.extend(words(user));
    argv
}

/// Without a hostfile the pool is this host; skipped where a real `/job/hostfile` exists.
fn no_default_hostfile() -> bool {
    let absent = !Path::new(DEFAULT_HOSTFILE).exists();
    if !absent {
        eprintln!("skipped: {DEFAULT_HOSTFILE} exists on this machine");
    }
    absent
}

#[test]
fn dry_run_on_this_host() {
    if !no_default_hostfile() {
        return;
    }
    let user = "rustspeed train --model gpt-tiny --steps 5";
    let out = rustspeed(&[
        "launch",
        "--num_gpus",
        "2",
        "--dry-run",
        "--",
        "rustspeed",
        "train",
        "--model",
        "gpt-tiny",
        "--steps",
        "5",
    ]);
    assert_eq!(words(&stdout(&out)), expected_argv("mpirun", &[("localhost", 2)], "127.0.0.1", 29500, user));

    // Without --num_gpus: one rank per core, DeepSpeed's "every device" on a CPU host.
    let cores = std::thread::available_parallelism().unwrap().get();
    let out = rustspeed(&["launch", "--dry-run", "--master_port", "7000", "--", "rustspeed", "train"]);
    assert_eq!(
        words(&stdout(&out)),
        expected_argv("mpirun", &[("localhost", cores)], "127.0.0.1", 7000, "rustspeed train")
    );
}

#[test]
fn dry_run_over_a_hostfile_with_include_num_nodes_and_num_gpus() {
    let sandbox = Sandbox::new("hostfile");
    let hostfile =
        sandbox.write("hosts", "# cluster\nworker-0 slots=4\n\nworker-1 slots=4\n   # spare\nworker-2 slots=2\n");
    let dry = |extra: &[&str]| {
        let mut args = vec!["launch", "--hostfile", hostfile.as_str(), "--dry-run"];
        args.extend(extra);
        args.extend(["--", "rustspeed", "train"]);
        words(&stdout(&rustspeed(&args)))
    };
    let all = [("worker-0", 4), ("worker-1", 4), ("worker-2", 2)];
    assert_eq!(dry(&[]), expected_argv("mpirun", &all, "worker-0", 29500, "rustspeed train"));
    assert_eq!(
        dry(&["--include", "worker-1@worker-2:0"]),
        expected_argv("mpirun", &[("worker-1", 4), ("worker-2", 1)], "worker-1", 29500, "rustspeed train")
    );
    assert_eq!(
        dry(&["--exclude", "worker-0:1,3@worker-2"]),
        expected_argv("mpirun", &[("worker-0", 2), ("worker-1", 4)], "worker-0", 29500, "rustspeed train")
    );
    assert_eq!(
        dry(&["--num_nodes", "2", "--num_gpus", "1", "--master_addr", "10.0.0.5", "--mpirun", "/opt/mpi/bin/mpirun"]),
        expected_argv("/opt/mpi/bin/mpirun", &[("worker-0", 1), ("worker-1", 1)], "10.0.0.5", 29500, "rustspeed train")
    );
}

#[test]
fn hostfile_and_selection_errors_are_clear() {
    let sandbox = Sandbox::new("errors");
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "a slots=2\nthis is bad slots=1\n",
            &[],
            "Hostfile contains a bad entry: this is bad slots=1, unable to proceed with launching (line 2",
        ),
        (
            "a slots=2\nb slots=1\na slots=4\n",
            &[],
            "Hostfile contains multiple entries for a, unable to proceed with launching (second entry on line 3)",
        ),
        ("# nothing\n", &[], "Hostfile is empty or not formatted correctly"),
        ("a slots=2\n", &["--include", "b"], "Hostname 'b' not found in hostfile"),
        ("a slots=2\n", &["--exclude", "a:2"], "No slot '2' specified on host 'a'"),
        ("a slots=2\n", &["--include", "a", "--num_gpus", "1"], "Cannot specify num_nodes/gpus with include/exclude"),
        ("a slots=2\n", &["--include", "a", "--exclude", "a:0"], "include_str and exclude_str are mutually exclusive"),
        ("a slots=2\n", &["--num_nodes", "0"], "--num_nodes 0: must be -1 (all) or a positive count"),
        ("a slots=2\n", &["--master_port", "70000"], "--master_port 70000"),
    ];
    for (i, (text, extra, expected)) in cases.iter().enumerate() {
        let hostfile = sandbox.write(&format!("hosts{i}"), text);
        let mut args = vec!["launch", "--hostfile", hostfile.as_str(), "--dry-run"];
        args.extend(*extra);
        args.extend(["--", "rustspeed", "train"]);
        let err = failure(&rustspeed(&args));
        assert!(err.contains(expected), "case {i}: expected {expected:?} in {err}");
    }
    let missing = sandbox.dir.join("no-such-hostfile");
    let err = failure(&rustspeed(&["launch", "--hostfile", missing.to_str().unwrap(), "--dry-run", "--", "x"]));
    assert!(err.contains("cannot read hostfile") && err.contains("no-such-hostfile"), "{err}");
}

#[test]
fn the_command_to_launch_is_required() {
    for args in [
        &["launch", "--num_gpus", "2", "--dry-run"][..],
        &["launch", "--dry-run", "--"],
        &["launch", "--rank-env", "--"],
    ] {
        let err = failure(&rustspeed(args));
        assert!(err.contains("no command to launch: give it after `--`"), "{args:?}: {err}");
    }
    // A command without `--` reads as a stray argument; the usage line says where the command goes.
    let err = failure(&rustspeed(&["launch", "--dry-run", "rustspeed", "train"]));
    assert!(err.contains("unexpected argument 'rustspeed'") && err.contains("-- COMMAND [ARGS...]"), "{err}");
    // The user's own `--help` after `--` belongs to the user's command.
    if no_default_hostfile() {
        let out = stdout(&rustspeed(&["launch", "--num_gpus", "1", "--dry-run", "--", "rustspeed", "train", "--help"]));
        assert!(out.trim_end().ends_with("-- rustspeed train --help"), "{out}");
    }
}

#[cfg(unix)]
#[test]
fn mpirun_runs_with_the_planned_arguments_and_its_failure_is_reported() {
    let sandbox = Sandbox::new("fake-mpirun");
    let hostfile = sandbox.write("hosts", "node-a slots=2\nnode-b slots=3\n");
    let expected = |mpirun: &str| {
        expected_argv(mpirun, &[("node-a", 2), ("node-b", 3)], "node-a", 29500, "rustspeed train --steps 3")
    };
    let launch = |mpirun: &str| {
        rustspeed(&["launch", "--hostfile", &hostfile, "--mpirun", mpirun, "--", "rustspeed", "train", "--steps", "3"])
    };

    let succeeding = sandbox.fake_mpirun(0);
    let out = launch(&succeeding);
    assert!(stdout(&out).contains("fake-mpirun-ran"), "mpirun's output streams through");
    let recorded = fs::read_to_string(format!("{succeeding}.args")).unwrap();
    assert_eq!(recorded.lines().map(String::from).collect::<Vec<_>>(), expected(&succeeding)[1..].to_vec());

    let failing = sandbox.fake_mpirun(3);
    let err = failure(&launch(&failing));
    assert!(err.contains("mpirun failed (exit status: 3)"), "{err}");
}

#[test]
fn a_missing_mpirun_says_how_to_install_it() {
    let sandbox = Sandbox::new("no-mpirun");
    let hostfile = sandbox.write("hosts", "localhost slots=1\n");
    let absent = sandbox.dir.join("bin/mpirun");
    let err =
        failure(&rustspeed(&["launch", "--hostfile", &hostfile, "--mpirun", absent.to_str().unwrap(), "--", "true"]));
    assert!(err.contains("not installed") && err.contains("apt-get install openmpi-bin libopenmpi-dev"), "{err}");
    assert!(err.contains("scripts/install-mpi.sh"), "{err}");
}

const PRINT_RANK_ENV: &str =
    "echo $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_SIZE ${CROSS_RANK:-none} ${CROSS_SIZE:-none} $MASTER_ADDR $MASTER_PORT";

/// Runs the shim with exactly `vars` (plus PATH) as its environment.
fn rank_env_shim(vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rustspeed"));
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.envs(vars.iter().copied()).args(["launch", "--rank-env", "--", "sh", "-c", PRINT_RANK_ENV]);
    cmd.output().unwrap()
}

#[cfg(unix)]
#[test]
fn rank_env_maps_openmpi_and_mpich_variables_before_running_the_command() {
    // OpenMPI, 2 hosts x 2 ranks, this process rank 3 = the second rank of the second host.
    let openmpi = [
        ("OMPI_COMM_WORLD_RANK", "3"),
        ("OMPI_COMM_WORLD_SIZE", "4"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ("RUSTSPEED_RANKS_PER_NODE", "2,2"),
        ("MASTER_ADDR", "node-a"),
        ("MASTER_PORT", "29500"),
    ];
    assert_eq!(stdout(&rank_env_shim(&openmpi)).trim(), "3 1 4 2 1 2 node-a 29500");

    // MPICH (Hydra) without the layout: no node index.
    let mpich = [
        ("PMI_RANK", "1"),
        ("PMI_SIZE", "3"),
        ("MPI_LOCALRANKID", "1"),
        ("MPI_LOCALNRANKS", "3"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "6000"),
    ];
    assert_eq!(stdout(&rank_env_shim(&mpich)).trim(), "1 1 3 3 none none 127.0.0.1 6000");

    let err = failure(&rank_env_shim(&[("MASTER_ADDR", "a"), ("MASTER_PORT", "1")]));
    assert!(
        err.contains("cannot tell this process's rank: none of OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK"),
        "{err}"
    );
    let err = failure(&rank_env_shim(&openmpi[..5]));
    assert!(err.contains("MASTER_ADDR"), "{err}");

    let out = rustspeed(&["launch", "--rank-env", "--num_gpus", "2", "--", "true"]);
    assert!(failure(&out).contains("--rank-env takes no other option (got --num_gpus)"));
}

/// The real OpenMPI on this host: 3 ranks, each printing the environment the shim gave it.
#[cfg(unix)]
#[test]
#[ignore = "needs OpenMPI's mpirun (scripts/install-mpi.sh)"]
fn openmpi_ranks_see_deepspeeds_environment() {
    let sandbox = Sandbox::new("openmpi");
    let hostfile = sandbox.write("hosts", "localhost slots=3\n");
    let out = Command::new(env!("CARGO_BIN_EXE_rustspeed"))
        // OpenMPI refuses to run as root without both of these; they change nothing for other users.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["launch", "--hostfile", &hostfile, "--master_port", "29511", "--", "sh", "-c", PRINT_RANK_ENV])
        .output()
        .unwrap();
    let mut lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    lines.sort();
    let expected: Vec<String> = (0..3).map(|r| format!("{r} {r} 3 3 0 1 localhost 29511")).collect();
    assert_eq!(lines, expected);
}
