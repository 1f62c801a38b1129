//! `rustspeed launch [options] -- COMMAND [ARGS...]`: DeepSpeed's launcher contract (`deepspeed` CLI,
//! `launcher/runner.py`; reference §5) on top of OpenMPI's `mpirun`.
//!
//! 1. The resource pool comes from a DeepSpeed hostfile (`hostname slots=N` lines, [`hostfile`]); without one
//!    (the default `/job/hostfile` absent) it is this host, `localhost`, with one slot per core, the CPU
//!    counterpart of DeepSpeed's "every visible GPU".
//! 2. `--include`/`--exclude`/`--num_nodes`/`--num_gpus` select hosts and slots as DeepSpeed does ([`pool`]).
//!    `--num_gpus N` means N ranks per host here (rustspeed ranks are CPU processes).
//! 3. The command is `mpirun` over those hosts ([`command`]), each rank running this binary as a shim
//!    (`rustspeed launch --rank-env -- COMMAND`, [`rank_env`]) that sets RANK, LOCAL_RANK, WORLD_SIZE,
//!    LOCAL_SIZE, CROSS_RANK, CROSS_SIZE, MASTER_ADDR, MASTER_PORT and RUSTSPEED_BACKEND=mpi, then becomes
//!    COMMAND.
//!
//! Differences from DeepSpeed, on purpose: an explicitly given `--hostfile` that cannot be read is an error
//! (DeepSpeed falls back to the local host); `--num_nodes 0`/`--num_gpus 0` are errors (DeepSpeed ignores them);
//! `--master_addr` defaults to the first host's name (DeepSpeed asks it for `hostname -I` over ssh) and a given
//! one is kept without a hostfile (DeepSpeed overrides it with 127.0.0.1); only the OpenMPI command line is
//! built (DeepSpeed also drives pdsh, MVAPICH, MPICH, Intel MPI, Slurm; the shim reads MPICH's variables too);
//! `CUDA_VISIBLE_DEVICES` plays no part.

mod command;
mod hostfile;
mod pool;
mod rank_env;

use crate::args::{opt, parse, switch, Args, Opt};
use hostfile::{parse_hostfile, HostEntry, HostfileError};
use pool::{resolve, PoolError, Selection};
use std::fmt;
use std::path::Path;
use std::process::Command;

/// DeepSpeed's default hostfile (`DLTS_HOSTFILE`).
const DEFAULT_HOSTFILE: &str = "/job/hostfile";
/// DeepSpeed's default master port (`TORCH_DISTRIBUTED_DEFAULT_PORT`).
const DEFAULT_MASTER_PORT: u16 = 29500;
/// The master address of a launch without a hostfile, as DeepSpeed.
const LOCAL_MASTER_ADDR: &str = "127.0.0.1";
const LOCAL_HOST: &str = "localhost";

const SYNOPSIS: &str = "usage: rustspeed launch [options] -- COMMAND [ARGS...]\n";

const OPTS: &[Opt] = &[
    opt("hostfile", "PATH", "hostfile, lines 'hostname slots=N' (default /job/hostfile; absent: this host only)"),
    opt("include", "SPEC", "hosts/slots to use: NAME[:SLOT[,SLOT...]][@NAME...], e.g. worker-0@worker-1:0,2"),
    opt("exclude", "SPEC", "hosts/slots not to use, same syntax (not with --include)"),
    opt("num_nodes", "N", "use the first N hosts (default -1: all)"),
    opt("num_gpus", "N", "ranks per host (default -1: the hostfile's slots; without a hostfile, one per core)"),
    opt("master_addr", "ADDR", "address of rank 0 (default: the first host; 127.0.0.1 without a hostfile)"),
    opt("master_port", "PORT", "port on the master (default 29500)"),
    opt("launcher_args", "ARGS", "extra mpirun arguments, split on whitespace (e.g. \"--allow-run-as-root\")"),
    opt("mpirun", "PATH", "OpenMPI's mpirun (default mpirun)"),
    switch("dry-run", "print the mpirun command instead of running it"),
    switch("rank-env", "(run by mpirun on each rank) map MPI's rank variables to RANK etc. and exec COMMAND"),
];

/// Why a launch did not happen or did not succeed.
#[derive(Debug)]
enum LaunchError {
    /// A bad option value or a missing command.
    Usage(String),
    HostfileUnreadable {
        path: String,
        error: std::io::Error,
    },
    Hostfile {
        path: String,
        error: HostfileError,
    },
    Pool(PoolError),
    MpirunMissing {
        mpirun: String,
    },
    MpirunUnstartable {
        mpirun: String,
        error: std::io::Error,
    },
    MpirunFailed {
        status: std::process::ExitStatus,
    },
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Usage(msg) => f.write_str(msg),
            LaunchError::HostfileUnreadable { path, error } => write!(f, "cannot read hostfile {path}: {error}"),
            LaunchError::Hostfile { path, error } => write!(f, "hostfile {path}: {error}"),
            LaunchError::Pool(error) => error.fmt(f),
            LaunchError::MpirunMissing { mpirun } => write!(
                f,
                "launcher '{mpirun}' not installed. `rustspeed launch` runs OpenMPI's mpirun: install it with \
                 scripts/install-mpi.sh or `apt-get install openmpi-bin libopenmpi-dev`, or give its path with \
                 --mpirun (--dry-run prints the command without running it)"
            ),
            LaunchError::MpirunUnstartable { mpirun, error } => write!(f, "cannot start '{mpirun}': {error}"),
            LaunchError::MpirunFailed { status } => write!(f, "mpirun failed ({status})"),
        }
    }
}

/// Splits `OPTIONS -- COMMAND...` at the first `--`.
fn split_command(argv: &[String]) -> (&[String], Option<&[String]>) {
    match argv.iter().position(|a| a == "--") {
        Some(at) => (&argv[..at], Some(&argv[at + 1..])),
        None => (argv, None),
    }
}

/// `--num_nodes`/`--num_gpus`: -1 means "all" (`None`), otherwise a positive count.
fn count(a: &Args, name: &str) -> Result<Option<usize>, LaunchError> {
    let value: i64 = a.parsed(name, -1).map_err(|e| LaunchError::Usage(e.to_string()))?;
    match value {
        -1 => Ok(None),
        n if n >= 1 => Ok(Some(n as usize)),
        n => Err(LaunchError::Usage(format!("--{name} {n}: must be -1 (all) or a positive count"))),
    }
}

/// The pool to choose from and whether it came from a hostfile.
fn load_pool(explicit: Option<&str>) -> Result<(Vec<HostEntry>, bool), LaunchError> {
    let path = explicit.unwrap_or(DEFAULT_HOSTFILE);
    if explicit.is_none() && !Path::new(path).exists() {
        eprintln!("launch: no hostfile at {path}: launching on this host only");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        return Ok((vec![HostEntry { name: LOCAL_HOST.to_string(), slots: cores }], false));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| LaunchError::HostfileUnreadable { path: path.to_string(), error })?;
    let hosts = parse_hostfile(&text).map_err(|error| LaunchError::Hostfile { path: path.to_string(), error })?;
    Ok((hosts, true))
}

/// The mpirun argv for the parsed options and the user's command.
fn plan(a: &Args, user_command: &[String]) -> Result<Vec<String>, LaunchError> {
    let selection = Selection {
        include: a.get("include").unwrap_or("").to_string(),
        exclude: a.get("exclude").unwrap_or("").to_string(),
        num_nodes: count(a, "num_nodes")?,
        num_gpus: count(a, "num_gpus")?,
    };
    let master_port: u16 =
        a.parsed("master_port", DEFAULT_MASTER_PORT).map_err(|e| LaunchError::Usage(e.to_string()))?;
    if master_port == 0 {
        return Err(LaunchError::Usage("--master_port 0: must be a port, 1-65535".into()));
    }
    let (pool, from_hostfile) = load_pool(a.get("hostfile"))?;
    let hosts = resolve(&pool, from_hostfile, &selection).map_err(LaunchError::Pool)?;
    let master_addr = match a.get("master_addr") {
        Some(addr) => addr.to_string(),
        None if from_hostfile => hosts[0].name.clone(),
        None => LOCAL_MASTER_ADDR.to_string(),
    };
    let shim = std::env::current_exe()
        .map_err(|e| LaunchError::Usage(format!("cannot find the rustspeed binary for the per-rank shim: {e}")))?;
    let shim = shim
        .to_str()
        .ok_or_else(|| LaunchError::Usage(format!("the rustspeed binary's path {} is not UTF-8", shim.display())))?;
    let launcher_args: Vec<String> =
        a.get("launcher_args").unwrap_or("").split_whitespace().map(String::from).collect();
    Ok(command::mpirun_argv(&command::MpirunPlan {
        mpirun: a.get("mpirun").unwrap_or("mpirun"),
        hosts: &hosts,
        master_addr: &master_addr,
        master_port,
        launcher_args: &launcher_args,
        shim,
        user_command,
    }))
}

/// Runs mpirun with inherited stdio (its output and the ranks' stream through) and waits for it.
fn run_mpirun(argv: &[String]) -> Result<(), LaunchError> {
    eprintln!("launch: {}", command::shell_join(argv));
    let mpirun = argv[0].clone();
    match Command::new(&mpirun).args(&argv[1..]).status() {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(LaunchError::MpirunMissing { mpirun }),
        Err(error) => Err(LaunchError::MpirunUnstartable { mpirun, error }),
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(LaunchError::MpirunFailed { status }),
    }
}

/// `rustspeed launch ARGV...`: prints (`--dry-run`) or runs the mpirun command, or, with `--rank-env`, acts as
/// the per-rank shim.
pub fn run(argv: &[String]) -> Result<(), String> {
    let (options, user_command) = split_command(argv);
    let a = match parse("launch", OPTS, options) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{SYNOPSIS}");
            return Ok(());
        }
        Err(e) if user_command.is_none() => return Err(format!("{e}\n{SYNOPSIS}")),
        Err(e) => return Err(e),
    };
    let Some(user_command) = user_command.filter(|c| !c.is_empty()) else {
        return Err(format!("no command to launch: give it after `--`\n{SYNOPSIS}"));
    };
    if a.flag("rank-env") {
        if let Some(other) = OPTS.iter().find(|o| o.name != "rank-env" && a.get(o.name).is_some()) {
            return Err(format!("--rank-env takes no other option (got --{})", other.name));
        }
        return rank_env::exec_with_rank_env(user_command);
    }
    let argv = plan(&a, user_command).map_err(|e| e.to_string())?;
    if a.flag("dry-run") {
        println!("{}", command::shell_join(&argv));
        return Ok(());
    }
    run_mpirun(&argv).map_err(|e| e.to_string())
}
