//! The OpenMPI command line of a launch, and its shell-quoted form for `--dry-run`.
//!
//! `mpirun -n W --host h0:k0,h1:k1 --map-by slot --bind-to none [LAUNCHER_ARGS...]
//!   -x RUSTSPEED_BACKEND=mpi -x MASTER_ADDR=A -x MASTER_PORT=P -x RUSTSPEED_RANKS_PER_NODE=k0,k1
//!   RUSTSPEED launch --rank-env -- COMMAND...`
//! - `--host h:k` gives each host k slots (OpenMPI >= 3), so no separate hostfile is written.
//! - `--map-by slot` fills hosts in order, giving DeepSpeed's host-major rank order that the shim relies on.
//! - `--bind-to none` as DeepSpeed's OpenMPI runner: OpenMPI's default binds each rank to one core, which would
//!   confine a rank's compute threads to that core.
//! - `-x NAME=VALUE` sets and exports a variable to every rank, on every host.

use super::pool::HostSlots;
use super::rank_env::RANKS_PER_NODE_VAR;

/// Everything that goes into the mpirun command line.
pub struct MpirunPlan<'a> {
    /// The mpirun program (`--mpirun`, default `mpirun`).
    pub mpirun: &'a str,
    pub hosts: &'a [HostSlots],
    pub master_addr: &'a str,
    pub master_port: u16,
    /// `--launcher_args`, split on whitespace, placed before the exports.
    pub launcher_args: &'a [String],
    /// The rustspeed binary each rank runs as its shim (`--rank-env`); the same path must exist on every host.
    pub shim: &'a str,
    pub user_command: &'a [String],
}

/// The argv of the mpirun command (program first).
pub fn mpirun_argv(plan: &MpirunPlan) -> Vec<String> {
    let world: usize = plan.hosts.iter().map(|h| h.slots.len()).sum();
    let host_list: Vec<String> = plan.hosts.iter().map(|h| format!("{}:{}", h.name, h.slots.len())).collect();
    let layout: Vec<String> = plan.hosts.iter().map(|h| h.slots.len().to_string()).collect();
    let mut argv: Vec<String> =
        vec![plan.mpirun.into(), "-n".into(), world.to_string(), "--host".into(), host_list.join(",")];
    argv.extend(["--map-by", "slot", "--bind-to", "none"].map(String::from));
    argv.extend(plan.launcher_args.iter().cloned());
    let exports = [
        ("RUSTSPEED_BACKEND", "mpi".to_string()),
        ("MASTER_ADDR", plan.master_addr.to_string()),
        ("MASTER_PORT", plan.master_port.to_string()),
        (RANKS_PER_NODE_VAR, layout.join(",")),
    ];
    for (name, value) in exports {
        argv.push("-x".into());
        argv.push(format!("{name}={value}"));
    }
    argv.extend([plan.shim, "launch", "--rank-env", "--"].map(String::from));
    argv.extend(plan.user_command.iter().cloned());
    argv
}

/// Quotes one word for a POSIX shell: unchanged when it holds only characters no shell treats specially, else
/// in single quotes (a `'` inside becomes `'\''`).
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,@+%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The argv as one line a shell runs as the same argv.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn host(name: &str, slots: &[usize]) -> HostSlots {
        HostSlots { name: name.to_string(), slots: slots.to_vec() }
    }

    #[test]
    fn single_node_command() {
        let hosts = [host("localhost", &[0, 1])];
        let user = words("rustspeed train --model gpt-tiny");
        let plan = MpirunPlan {
            mpirun: "mpirun",
            hosts: &hosts,
            master_addr: "127.0.0.1",
            master_port: 29500,
            launcher_args: &[],
            shim: "/opt/bin/rustspeed",
            user_command: &user,
        };
        let expected = words(
            "mpirun -n 2 --host localhost:2 --map-by slot --bind-to none -x RUSTSPEED_BACKEND=mpi \
             -x MASTER_ADDR=127.0.0.1 -x MASTER_PORT=29500 -x RUSTSPEED_RANKS_PER_NODE=2 \
             /opt/bin/rustspeed launch --rank-env -- rustspeed train --model gpt-tiny",
        );
        assert_eq!(mpirun_argv(&plan), expected);
    }

    /// Slot ids (here 0,2 and 1) only count ranks: CPU ranks have no device to pin.
    #[test]
    fn multi_node_command_with_launcher_args() {
        let hosts = [host("worker-0", &[0, 1, 2, 3]), host("worker-1", &[0, 2]), host("10.1.2.3", &[1])];
        let user = words("rustspeed train --config ds.json");
        let launcher_args = words("--allow-run-as-root --mca btl_tcp_if_include eth0");
        let plan = MpirunPlan {
            mpirun: "/usr/local/bin/mpirun",
            hosts: &hosts,
            master_addr: "worker-0",
            master_port: 6000,
            launcher_args: &launcher_args,
            shim: "rs",
            user_command: &user,
        };
        let expected = words(
            "/usr/local/bin/mpirun -n 7 --host worker-0:4,worker-1:2,10.1.2.3:1 --map-by slot --bind-to none \
             --allow-run-as-root --mca btl_tcp_if_include eth0 -x RUSTSPEED_BACKEND=mpi -x MASTER_ADDR=worker-0 \
             -x MASTER_PORT=6000 -x RUSTSPEED_RANKS_PER_NODE=4,2,1 rs launch --rank-env -- rustspeed train \
             --config ds.json",
        );
        assert_eq!(mpirun_argv(&plan), expected);
    }

    #[test]
    fn shell_join_quotes_only_what_a_shell_would_split_or_expand() {
        let argv: Vec<String> =
            ["mpirun", "-x", "A=b", "echo", "two words", "it's", "$HOME", ""].iter().map(|s| s.to_string()).collect();
        assert_eq!(shell_join(&argv), r"mpirun -x A=b echo 'two words' 'it'\''s' '$HOME' ''");
    }
}
