//! `rustspeed launch --rank-env -- COMMAND...`: the per-rank shim that mpirun starts. MPI launchers give each
//! process its rank under their own names; this maps them onto DeepSpeed's contract (reference §5.2/§7) and
//! then replaces itself with COMMAND.
//!
//! Set for COMMAND:
//! - `RANK`, `WORLD_SIZE`: OpenMPI `OMPI_COMM_WORLD_RANK`/`_SIZE`, PMIx `PMIX_RANK`, MPICH (Hydra) `PMI_RANK`/
//!   `PMI_SIZE`; when several are set they must agree.
//! - `LOCAL_RANK`, `LOCAL_SIZE`: `OMPI_COMM_WORLD_LOCAL_RANK`/`_LOCAL_SIZE`, Hydra `MPI_LOCALRANKID`/
//!   `MPI_LOCALNRANKS`, Cray PALS `PALS_LOCAL_RANKID` (the names DeepSpeed's `launcher_helper.py` reads), or
//!   derived from the launcher's layout.
//! - `CROSS_RANK` (node index), `CROSS_SIZE` (nodes): only derivable from the layout that `rustspeed launch`
//!   exports as `RUSTSPEED_RANKS_PER_NODE=k0,k1,...` (ranks per host in rank order); absent without it.
//! - `MASTER_ADDR`, `MASTER_PORT`: required, passed through (mpirun exports them).
//!
//! With the layout, the MPI's own local rank/size must match it: a mismatch means mpirun placed ranks in another
//! order than DeepSpeed's host-major one (e.g. `--map-by node` in `--launcher_args`), which is an error.

use std::collections::BTreeMap;
use std::fmt;

/// The environment variable carrying the launcher's layout: ranks per host, in host (= rank) order.
pub const RANKS_PER_NODE_VAR: &str = "RUSTSPEED_RANKS_PER_NODE";

const RANK_VARS: &[&str] = &["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];
const SIZE_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
const LOCAL_RANK_VARS: &[&str] = &["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID"];
const LOCAL_SIZE_VARS: &[&str] = &["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"];

/// Why the rank environment cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RankEnvError {
    /// None of the variables that could give `what` is set.
    Missing {
        what: &'static str,
        tried: Vec<&'static str>,
    },
    NotANumber {
        name: String,
        value: String,
    },
    /// Two launcher variables for the same quantity disagree.
    Disagree {
        what: &'static str,
        first: (String, usize),
        second: (String, usize),
    },
    /// `what` = `value` is not below `bound` (`bound_name`).
    OutOfRange {
        what: &'static str,
        value: usize,
        bound_name: &'static str,
        bound: usize,
    },
    /// `MASTER_PORT` is not 1-65535.
    BadPort {
        value: String,
    },
    /// The launcher's layout does not fit the MPI environment.
    LayoutMismatch {
        detail: String,
    },
}

impl fmt::Display for RankEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankEnvError::Missing { what, tried } => write!(
                f,
                "cannot tell this process's {what}: none of {} is set; `rustspeed launch --rank-env` is meant to be \
                 started by mpirun (as `rustspeed launch` does)",
                tried.join(", ")
            ),
            RankEnvError::NotANumber { name, value } => write!(f, "{name}={value:?} is not a non-negative integer"),
            RankEnvError::BadPort { value } => write!(f, "MASTER_PORT={value:?} is not a port (1-65535)"),
            RankEnvError::Disagree { what, first, second } => write!(
                f,
                "the launcher's {what} variables disagree: {}={} but {}={}",
                first.0, first.1, second.0, second.1
            ),
            RankEnvError::OutOfRange { what, value, bound_name, bound } => {
                write!(f, "{what} {value} is not below {bound_name} {bound}")
            }
            RankEnvError::LayoutMismatch { detail } => write!(
                f,
                "{RANKS_PER_NODE_VAR} does not fit the MPI environment: {detail}; mpirun placed ranks otherwise than \
                 host by host in hostfile order (causes: two hostfile names for one machine, a --map-by in \
                 --launcher_args)"
            ),
        }
    }
}

fn number(name: &str, value: &str) -> Result<usize, RankEnvError> {
    value.trim().parse().map_err(|_| RankEnvError::NotANumber { name: name.to_string(), value: value.to_string() })
}

/// The value of the first set variable among `names`, checking that every other set one agrees.
fn agreed(vars: &BTreeMap<String, String>, what: &'static str, names: &[&str]) -> Result<Option<usize>, RankEnvError> {
    let mut found: Option<(String, usize)> = None;
    for &name in names {
        let Some(raw) = vars.get(name) else { continue };
        let value = number(name, raw)?;
        match &found {
            None => found = Some((name.to_string(), value)),
            Some(first) if first.1 != value => {
                return Err(RankEnvError::Disagree { what, first: first.clone(), second: (name.to_string(), value) })
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(_, v)| v))
}

/// Where a rank sits in the launcher's layout.
struct Placement {
    node: usize,
    nodes: usize,
    local_rank: usize,
    local_size: usize,
}

fn place(layout_text: &str, rank: usize, world: usize) -> Result<Placement, RankEnvError> {
    let mismatch = |detail: String| RankEnvError::LayoutMismatch { detail };
    let layout = layout_text
        .split(',')
        .map(|k| match number(RANKS_PER_NODE_VAR, k) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(mismatch(format!("'{layout_text}' is not a list of positive rank counts"))),
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let total: usize = layout.iter().sum();
    if total != world {
        return Err(mismatch(format!("'{layout_text}' sums to {total} ranks but the world size is {world}")));
    }
    let mut first_rank = 0;
    for (node, &local_size) in layout.iter().enumerate() {
        if rank < first_rank + local_size {
            return Ok(Placement { node, nodes: layout.len(), local_rank: rank - first_rank, local_size });
        }
        first_rank += local_size;
    }
    Err(RankEnvError::OutOfRange { what: "RANK", value: rank, bound_name: "WORLD_SIZE", bound: world })
}

/// Checks an MPI-given value against the layout's, or takes the layout's when MPI gives none.
fn reconcile(
    what: &'static str,
    from_mpi: Option<usize>,
    from_layout: Option<usize>,
    rank: usize,
) -> Result<Option<usize>, RankEnvError> {
    match (from_mpi, from_layout) {
        (Some(m), Some(l)) if m != l => Err(RankEnvError::LayoutMismatch {
            detail: format!("rank {rank} has {what} {m} from MPI but {l} by the layout"),
        }),
        (m, l) => Ok(m.or(l)),
    }
}

/// The variables to set for the user's command, in a fixed order: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE,
/// CROSS_RANK, CROSS_SIZE (the last three when derivable), MASTER_ADDR, MASTER_PORT.
pub fn rank_env(vars: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, RankEnvError> {
    let rank =
        agreed(vars, "rank", RANK_VARS)?.ok_or(RankEnvError::Missing { what: "rank", tried: RANK_VARS.to_vec() })?;
    let mut world = agreed(vars, "world size", SIZE_VARS)?;
    let layout = vars.get(RANKS_PER_NODE_VAR);
    if world.is_none() {
        world = layout.map(|l| l.split(',').filter_map(|k| k.trim().parse::<usize>().ok()).sum());
    }
    let world = world.ok_or(RankEnvError::Missing { what: "world size", tried: SIZE_VARS.to_vec() })?;
    if rank >= world {
        return Err(RankEnvError::OutOfRange { what: "RANK", value: rank, bound_name: "WORLD_SIZE", bound: world });
    }
    let placement = layout.map(|l| place(l, rank, world)).transpose()?;
    let local_rank = reconcile(
        "local rank",
        agreed(vars, "local rank", LOCAL_RANK_VARS)?,
        placement.as_ref().map(|p| p.local_rank),
        rank,
    )?
    .ok_or(RankEnvError::Missing { what: "local rank", tried: LOCAL_RANK_VARS.to_vec() })?;
    let local_size = reconcile(
        "local size",
        agreed(vars, "local size", LOCAL_SIZE_VARS)?,
        placement.as_ref().map(|p| p.local_size),
        rank,
    )?;
    if let Some(local_size) = local_size.filter(|&n| local_rank >= n) {
        return Err(RankEnvError::OutOfRange {
            what: "LOCAL_RANK",
            value: local_rank,
            bound_name: "LOCAL_SIZE",
            bound: local_size,
        });
    }
    let master_addr = vars
        .get("MASTER_ADDR")
        .filter(|a| !a.trim().is_empty())
        .ok_or(RankEnvError::Missing { what: "master address", tried: vec!["MASTER_ADDR"] })?;
    let master_port =
        vars.get("MASTER_PORT").ok_or(RankEnvError::Missing { what: "master port", tried: vec!["MASTER_PORT"] })?;
    if !matches!(master_port.trim().parse::<u16>(), Ok(p) if p > 0) {
        return Err(RankEnvError::BadPort { value: master_port.clone() });
    }

    let mut env =
        vec![("RANK", rank.to_string()), ("LOCAL_RANK", local_rank.to_string()), ("WORLD_SIZE", world.to_string())];
    if let Some(local_size) = local_size {
        env.push(("LOCAL_SIZE", local_size.to_string()));
    }
    if let Some(p) = &placement {
        env.push(("CROSS_RANK", p.node.to_string()));
        env.push(("CROSS_SIZE", p.nodes.to_string()));
    }
    env.push(("MASTER_ADDR", master_addr.clone()));
    env.push(("MASTER_PORT", master_port.trim().to_string()));
    Ok(env.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// This process's environment as UTF-8 pairs (variables that are not UTF-8 cannot be launcher variables and are
/// left out rather than panicking, as `std::env::vars` would).
fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// Runs `command` with the rank environment: on Unix the process image is replaced (signals from mpirun reach the
/// command directly); elsewhere the command runs as a child and its failure becomes the error.
pub fn exec_with_rank_env(command: &[String]) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("no command after `--` for --rank-env")?;
    let env = rank_env(&process_env()).map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(program);
    child.args(args).envs(env);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = child.exec();
        Err(format!("cannot run '{program}': {err}"))
    }
    #[cfg(not(unix))]
    {
        let status = child.status().map_err(|e| format!("cannot run '{program}': {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("'{program}' failed: {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn as_map(env: Vec<(String, String)>) -> BTreeMap<String, String> {
        env.into_iter().collect()
    }

    const MASTER: [(&str, &str); 2] = [("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];

    #[test]
    fn openmpi_variables_map_to_deepspeeds_names() {
        let mut v = vars(&[
            ("OMPI_COMM_WORLD_RANK", "5"),
            ("OMPI_COMM_WORLD_SIZE", "6"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("PMIX_RANK", "5"),
        ]);
        v.extend(vars(&MASTER));
        let env = rank_env(&v).unwrap();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"]);
        let env = as_map(env);
        assert_eq!((env["RANK"].as_str(), env["LOCAL_RANK"].as_str(), env["WORLD_SIZE"].as_str()), ("5", "1", "6"));
        assert_eq!(
            (env["LOCAL_SIZE"].as_str(), env["MASTER_ADDR"].as_str(), env["MASTER_PORT"].as_str()),
            ("2", "10.0.0.1", "29500")
        );
    }

    #[test]
    fn mpich_hydra_variables_map_to_deepspeeds_names() {
        let mut v = vars(&[("PMI_RANK", "2"), ("PMI_SIZE", "4"), ("MPI_LOCALRANKID", "0"), ("MPI_LOCALNRANKS", "2")]);
        v.extend(vars(&MASTER));
        let env = as_map(rank_env(&v).unwrap());
        assert_eq!(env["RANK"], "2");
        assert_eq!(env["WORLD_SIZE"], "4");
        assert_eq!(env["LOCAL_RANK"], "0");
        assert_eq!(env["LOCAL_SIZE"], "2");
        assert!(!env.contains_key("CROSS_RANK"), "no layout: the node index is not derivable");
    }

    /// Layout 3,2,4 (9 ranks): rank 6 is the second rank (index 1) of the third host (index 2), whose 4 ranks are
    /// ranks 5..9.
    #[test]
    fn the_layout_gives_cross_rank_and_fills_missing_local_values() {
        let mut v = vars(&[("PMI_RANK", "6"), ("PMI_SIZE", "9"), (RANKS_PER_NODE_VAR, "3,2,4")]);
        v.extend(vars(&MASTER));
        let env = as_map(rank_env(&v).unwrap());
        assert_eq!(env["LOCAL_RANK"], "1");
        assert_eq!(env["LOCAL_SIZE"], "4");
        assert_eq!(env["CROSS_RANK"], "2");
        assert_eq!(env["CROSS_SIZE"], "3");
        for rank in 0..9 {
            v.insert("PMI_RANK".into(), rank.to_string());
            let env = as_map(rank_env(&v).unwrap());
            let (expected_node, expected_local) = match rank {
                0..=2 => (0, rank),
                3..=4 => (1, rank - 3),
                _ => (2, rank - 5),
            };
            assert_eq!(env["CROSS_RANK"], expected_node.to_string(), "rank {rank}");
            assert_eq!(env["LOCAL_RANK"], expected_local.to_string(), "rank {rank}");
        }
    }

    #[test]
    fn a_placement_other_than_host_by_host_is_refused() {
        // By-node mapping on 2 hosts x 2: rank 1 lands on the second host as its local rank 0.
        let mut v = vars(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            (RANKS_PER_NODE_VAR, "2,2"),
        ]);
        v.extend(vars(&MASTER));
        assert!(matches!(rank_env(&v).unwrap_err(), RankEnvError::LayoutMismatch { .. }));
        v.insert(RANKS_PER_NODE_VAR.into(), "2,1".into());
        v.insert("OMPI_COMM_WORLD_LOCAL_RANK".into(), "1".into());
        let err = rank_env(&v).unwrap_err();
        assert!(err.to_string().contains("sums to 3 ranks but the world size is 4"), "{err}");
    }

    #[test]
    fn missing_and_bad_variables_are_named() {
        let err = rank_env(&vars(&MASTER)).unwrap_err();
        assert_eq!(err, RankEnvError::Missing { what: "rank", tried: RANK_VARS.to_vec() });
        assert!(err.to_string().contains("OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK"), "{err}");

        let base =
            vars(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "0")]);
        let err = rank_env(&base).unwrap_err();
        assert_eq!(err, RankEnvError::Missing { what: "master address", tried: vec!["MASTER_ADDR"] });

        let mut no_local = vars(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]);
        no_local.extend(vars(&MASTER));
        assert!(matches!(rank_env(&no_local).unwrap_err(), RankEnvError::Missing { what: "local rank", .. }));

        let mut bad_port = base.clone();
        bad_port.extend(vars(&[("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")]));
        assert_eq!(rank_env(&bad_port).unwrap_err(), RankEnvError::BadPort { value: "70000".into() });

        let mut disagree = base.clone();
        disagree.extend(vars(&MASTER));
        disagree.insert("PMIX_RANK".into(), "1".into());
        let err = rank_env(&disagree).unwrap_err();
        assert!(err.to_string().contains("OMPI_COMM_WORLD_RANK=0 but PMIX_RANK=1"), "{err}");

        let mut not_a_number = base.clone();
        not_a_number.extend(vars(&MASTER));
        not_a_number.insert("OMPI_COMM_WORLD_SIZE".into(), "two".into());
        assert!(matches!(rank_env(&not_a_number).unwrap_err(), RankEnvError::NotANumber { .. }));

        let mut out_of_range = base;
        out_of_range.extend(vars(&MASTER));
        out_of_range.insert("OMPI_COMM_WORLD_RANK".into(), "2".into());
        assert!(matches!(rank_env(&out_of_range).unwrap_err(), RankEnvError::OutOfRange { what: "RANK", .. }));
    }
}
