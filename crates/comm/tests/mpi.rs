//! The MPI backend against serial computations of each collective, and its timeout. One MPI job runs one
//! process per rank, and MPI can be initialized once per process, so this is a plain program
//! (`harness = false`), run by `scripts/test-mpi.sh` under `mpirun -n 2`:
//!
//! - no argument (or `collectives`): every collective against its serial definition, results bit-identical on
//!   every rank, local argument errors; prints one `PASS`/`FAIL` line per check and exits non-zero on a failure.
//!   Also runs as a single process (`cargo test --features mpi`), where the world has one rank.
//! - `timeout`: rank 1 sleeps past a short timeout before a barrier; every other rank must get
//!   `CommError::Timeout` within the timeout plus a margin, then `CommError::Broken`, and the dropped broken
//!   communicator aborts the job (exit code `ABORT_EXIT_CODE`) instead of hanging. Needs two or more ranks.
#![cfg(feature = "mpi")]

use rustspeed_comm::mpi::{timeout_from_env, MpiComm, MpiInitError, ABORT_EXIT_CODE, DEFAULT_TIMEOUT, TIMEOUT_ENV};
use rustspeed_comm::{CommError, Communicator, Op, ReduceOp};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Generous for healthy collectives on a loaded 2-core machine.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// Short, for the check that waits for a stalled rank.
const FAILURE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Scheduling slack past the timeout before a timed-out collective must have returned.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(2);
/// Relative error allowed between MPI's sum of inexact values (in the library's order) and a float64 sum:
/// a few f32 roundings per element at two to four ranks.
const SUM_TOLERANCE: f64 = 1e-6;

type Check = Result<(), String>;
/// A check's name and the check.
type NamedCheck = (&'static str, fn(&MpiComm) -> Check);

fn expect(condition: bool, what: impl FnOnce() -> String) -> Check {
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

fn ok<T>(result: Result<T, CommError>) -> Result<T, String> {
    result.map_err(|e| format!("unexpected error: {e}"))
}

/// Rank `rank`'s contribution: multiples of 1/8 of magnitude below 64, so every sum of a few ranks is exact in f32
/// whatever the order MPI adds them in — the serial definition is then the exact answer.
fn exact_data(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| ((rank * 31 + i * 7) % 509) as f32 * 0.125 - 20.0).collect()
}

/// Rank `rank`'s contribution with rounding in every sum, to see that every rank gets the same bits.
fn inexact_data(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| ((rank * 31 + i * 7) % 1013) as f32 * 0.37 + 0.1 / (rank + 1) as f32).collect()
}

/// Element-wise fold of every rank's contribution in rank order.
fn serial(world: usize, len: usize, data: fn(usize, usize) -> Vec<f32>, f: fn(f32, f32) -> f32) -> Vec<f32> {
    let all: Vec<Vec<f32>> = (0..world).map(|r| data(r, len)).collect();
    (0..len).map(|i| all[1..].iter().fold(all[0][i], |acc, x| f(acc, x[i]))).collect()
}

fn all_reduce_matches_serial(comm: &MpiComm) -> Check {
    let (rank, world) = (comm.rank(), comm.world_size());
    // 11 takes the short-message algorithms, 100_003 (odd, large) the segmented ones.
    for len in [0, 1, 11, 100_003] {
        let sum = serial(world, len, exact_data, |a, b| a + b);
        let max = serial(world, len, exact_data, f32::max);
        let avg: Vec<f32> = sum.iter().map(|x| x * (1.0 / world as f32)).collect();
        for (op, expected) in [(ReduceOp::Sum, &sum), (ReduceOp::Avg, &avg), (ReduceOp::Max, &max)] {
            let mut buf = exact_data(rank, len);
            ok(comm.all_reduce(&mut buf, op))?;
            expect(&buf == expected, || format!("{op:?} over {len} elements differs from the serial fold"))?;
        }
    }
    Ok(())
}

fn results_are_bit_identical_on_every_rank(comm: &MpiComm) -> Check {
    let (rank, world) = (comm.rank(), comm.world_size());
    let len: usize = 100_003;
    // ZeRO's partition: equal shares, the last one short.
    let share = len.div_ceil(world);
    let counts: Vec<usize> = (0..world).map(|r| share.min(len.saturating_sub(r * share))).collect();
    let mut sum = inexact_data(rank, len);
    ok(comm.all_reduce(&mut sum, ReduceOp::Sum))?;
    let mut scattered = vec![0.0; counts[rank]];
    ok(comm.reduce_scatter(&inexact_data(rank, len), &counts, &mut scattered, ReduceOp::Sum))?;
    // The sum in float64, independent of the order MPI adds in.
    let contributions: Vec<Vec<f32>> = (0..world).map(|r| inexact_data(r, len)).collect();
    let exact: Vec<f64> = (0..len).map(|i| contributions.iter().map(|c| f64::from(c[i])).sum::<f64>()).collect();
    let close = |got: &[f32], want: &[f64]| {
        got.iter().zip(want).all(|(&g, &w)| (f64::from(g) - w).abs() <= SUM_TOLERANCE * w.abs().max(1.0))
    };
    expect(close(&sum, &exact), || "all_reduce's sum is not the sum of the contributions".into())?;
    let offset: usize = counts[..rank].iter().sum();
    expect(close(&scattered, &exact[offset..offset + counts[rank]]), || "reduce_scatter's sum is off".into())?;
    // Every rank's all-reduce result gathered to every rank (all-gather copies bits; `all_gather_matches_serial`
    // checks that exactly) and compared bit by bit with rank 0's.
    let mut all = vec![0.0; len * world];
    ok(comm.all_gather(&sum, &vec![len; world], &mut all))?;
    for r in 1..world {
        let same = all[..len].iter().zip(&all[r * len..(r + 1) * len]).all(|(a, b)| a.to_bits() == b.to_bits());
        expect(same, || format!("rank {r}'s all_reduce result differs in its bits from rank 0's"))?;
    }
    Ok(())
}

fn reduce_scatter_matches_serial(comm: &MpiComm) -> Check {
    let (rank, world) = (comm.rank(), comm.world_size());
    let shares: [Vec<usize>; 3] = [
        (0..world).map(|r| r + 1).collect(), // variable counts: MPI_Ireduce_scatter
        vec![5; world],                      // equal counts: MPI_Ireduce_scatter_block
        (0..world).map(|r| 3 * r).collect(), // rank 0's share is empty
    ];
    for counts in &shares {
        let total: usize = counts.iter().sum();
        let offset: usize = counts[..rank].iter().sum();
        let sum = serial(world, total, exact_data, |a, b| a + b);
        let max = serial(world, total, exact_data, f32::max);
        for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max] {
            let mut out = vec![f32::NAN; counts[rank]];
            ok(comm.reduce_scatter(&exact_data(rank, total), counts, &mut out, op))?;
            let expected: Vec<f32> = match op {
                ReduceOp::Sum => sum[offset..offset + counts[rank]].to_vec(),
                ReduceOp::Avg => sum[offset..offset + counts[rank]].iter().map(|x| x * (1.0 / world as f32)).collect(),
                ReduceOp::Max => max[offset..offset + counts[rank]].to_vec(),
            };
            expect(out == expected, || format!("{op:?} with counts {counts:?} differs from the serial definition"))?;
        }
    }
    Ok(())
}

fn all_gather_matches_serial(comm: &MpiComm) -> Check {
    let (rank, world) = (comm.rank(), comm.world_size());
    for counts in [(0..world).map(|r| r + 1).collect::<Vec<_>>(), vec![4; world], (0..world).map(|r| 2 * r).collect()] {
        let total: usize = counts.iter().sum();
        let mut out = vec![f32::NAN; total];
        ok(comm.all_gather(&inexact_data(rank, counts[rank]), &counts, &mut out))?;
        let expected: Vec<f32> = (0..world).flat_map(|r| inexact_data(r, counts[r])).collect();
        let same = out.len() == expected.len() && out.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
        expect(same, || format!("all_gather with counts {counts:?} is not the concatenation in rank order"))?;
    }
    Ok(())
}

fn broadcast_from_every_root(comm: &MpiComm) -> Check {
    let (rank, world) = (comm.rank(), comm.world_size());
    for root in 0..world {
        for len in [1, 1000] {
            let mut buf = inexact_data(rank, len);
            ok(comm.broadcast(&mut buf, root))?;
            expect(buf == inexact_data(root, len), || format!("broadcast from root {root} of {len} elements"))?;
        }
    }
    ok(comm.barrier())
}

fn many_collectives_with_delays_stay_in_step(comm: &MpiComm) -> Check {
    let (rank, world) = (comm.rank(), comm.world_size());
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (rank as u64 + 1);
    for i in 0..200 {
        // xorshift64: a different sleep on every rank before every collective.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        std::thread::sleep(Duration::from_micros(state % 300));
        let mut x = [(rank + i) as f32];
        ok(comm.all_reduce(&mut x, ReduceOp::Sum))?;
        let expected: f32 = (0..world).map(|r| (r + i) as f32).sum();
        expect(x[0] == expected, || format!("collective {i}: {} instead of {expected}", x[0]))?;
    }
    Ok(())
}

fn bad_arguments_are_size_errors_and_leave_it_usable(comm: &MpiComm) -> Check {
    let world = comm.world_size();
    let mut out = vec![0.0; 2];
    let wrong_counts = comm.reduce_scatter(&[1.0; 4], &vec![1; world + 1], &mut out, ReduceOp::Sum);
    expect(matches!(wrong_counts, Err(CommError::Size { op: Op::ReduceScatter, .. })), || format!("{wrong_counts:?}"))?;
    let short_output = comm.all_gather(&[1.0], &vec![1; world], &mut vec![0.0; world + 1]);
    expect(matches!(short_output, Err(CommError::Size { op: Op::AllGather, .. })), || format!("{short_output:?}"))?;
    let bad_root = comm.broadcast(&mut [1.0], world);
    expect(
        matches!(&bad_root, Err(e @ CommError::Size { op: Op::Broadcast, .. }) if e.to_string().contains("root")),
        || format!("{bad_root:?}"),
    )?;
    let mut x = [1.0];
    ok(comm.all_reduce(&mut x, ReduceOp::Sum))?;
    expect(x[0] == world as f32, || "the communicator stopped working after local errors".into())
}

/// `DEEPSPEED_TIMEOUT` is whole minutes, 30 when unset, and a bad value is an error before MPI is initialized.
/// Runs before MPI starts, while the process has one thread (setting variables races with threads reading them).
fn timeout_env_is_whole_minutes() -> Check {
    std::env::set_var(TIMEOUT_ENV, "2");
    let two = timeout_from_env();
    std::env::set_var(TIMEOUT_ENV, "half an hour");
    let words = MpiComm::from_env().map(|_| ());
    std::env::remove_var(TIMEOUT_ENV);
    let unset = timeout_from_env();
    expect(two == Ok(Duration::from_secs(120)), || format!("DEEPSPEED_TIMEOUT=2 gave {two:?}"))?;
    expect(unset == Ok(DEFAULT_TIMEOUT) && DEFAULT_TIMEOUT == Duration::from_secs(30 * 60), || {
        format!("unset gave {unset:?}")
    })?;
    expect(
        matches!(&words, Err(e @ MpiInitError::Timeout { value }) if value == "half an hour" && e.to_string().contains(TIMEOUT_ENV)),
        || format!("a bad DEEPSPEED_TIMEOUT gave {words:?}"),
    )?;
    expect(!mpi::is_initialized(), || "a bad DEEPSPEED_TIMEOUT still initialized MPI".into())
}

/// MPI is initialized once per process: a second communicator is an error while the first lives.
fn a_second_communicator_is_refused(_comm: &MpiComm) -> Check {
    let second = MpiComm::from_env().map(|_| ());
    expect(second == Err(MpiInitError::AlreadyInitialized), || format!("a second MpiComm gave {second:?}"))
}

fn run_collectives(comm: &MpiComm, before_init: Check) -> ExitCode {
    let checks: [NamedCheck; 8] = [
        ("a_second_communicator_is_refused", a_second_communicator_is_refused),
        ("all_reduce_matches_serial", all_reduce_matches_serial),
        ("results_are_bit_identical_on_every_rank", results_are_bit_identical_on_every_rank),
        ("reduce_scatter_matches_serial", reduce_scatter_matches_serial),
        ("all_gather_matches_serial", all_gather_matches_serial),
        ("broadcast_from_every_root", broadcast_from_every_root),
        ("many_collectives_with_delays_stay_in_step", many_collectives_with_delays_stay_in_step),
        ("bad_arguments_are_size_errors_and_leave_it_usable", bad_arguments_are_size_errors_and_leave_it_usable),
    ];
    let rank = comm.rank();
    let mut failed = 0;
    let results = std::iter::once(("timeout_env_is_whole_minutes", before_init))
        .chain(checks.iter().map(|&(name, check)| (name, check(comm))));
    for (name, result) in results {
        match result {
            Ok(()) => println!("rank {rank}: PASS {name}"),
            Err(why) => {
                println!("rank {rank}: FAIL {name}: {why}");
                failed += 1;
            }
        }
    }
    println!("rank {rank}: {} passed, {failed} failed", checks.len() + 1 - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Rank 1 stalls; the others must time out in the barrier, then find the communicator broken.
fn run_timeout(comm: &MpiComm) -> ExitCode {
    let rank = comm.rank();
    if comm.world_size() < 2 {
        println!("rank {rank}: FAIL the timeout check needs two or more ranks");
        return ExitCode::FAILURE;
    }
    if rank == 1 {
        // Stalls past everyone's timeout; the abort of the ranks that timed out ends this process.
        std::thread::sleep(FAILURE_TIMEOUT * 4);
        let late = comm.barrier();
        println!("rank {rank}: FAIL still running after the others timed out; barrier gave {late:?}");
        return ExitCode::FAILURE;
    }
    let start = Instant::now();
    let result = comm.barrier();
    let elapsed = start.elapsed();
    let verdict = match &result {
        Err(e @ CommError::Timeout { op: Op::Barrier, rank: r, missing, waited })
            if *r == rank && missing.is_empty() && *waited == FAILURE_TIMEOUT =>
        {
            if elapsed < FAILURE_TIMEOUT || elapsed > FAILURE_TIMEOUT + TIMEOUT_MARGIN {
                Err(format!("returned after {elapsed:?}, outside [{FAILURE_TIMEOUT:?}, +{TIMEOUT_MARGIN:?}]"))
            } else if !(e.to_string().contains("barrier") && e.to_string().contains(&format!("rank {rank}"))) {
                Err(format!("the message does not name both the operation and the rank: {e}"))
            } else {
                Ok(format!("timed out after {elapsed:?}: {e}"))
            }
        }
        other => Err(format!("expected a barrier timeout on rank {rank}, got {other:?}")),
    };
    let later = comm.all_reduce(&mut [1.0], ReduceOp::Sum);
    let verdict = verdict.and_then(|msg| match &later {
        Err(CommError::Broken { op: Op::AllReduce, cause, .. }) if cause.contains("timed out in barrier") => Ok(msg),
        other => Err(format!("a collective after the timeout should fail at once as broken, got {other:?}")),
    });
    match verdict {
        Ok(msg) => {
            println!("rank {rank}: PASS a_stalled_rank_times_out_the_barrier: {msg}");
            println!("rank {rank}: dropping the broken communicator must abort the job with code {ABORT_EXIT_CODE}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("rank {rank}: FAIL a_stalled_rank_times_out_the_barrier: {why}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "collectives".into());
    let before_init = timeout_env_is_whole_minutes();
    let comm = match MpiComm::from_env() {
        Ok(comm) => comm,
        Err(e) => {
            eprintln!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match mode.as_str() {
        "collectives" => run_collectives(&comm.with_timeout(HEALTHY_TIMEOUT), before_init),
        "timeout" => run_timeout(&comm.with_timeout(FAILURE_TIMEOUT)),
        other => {
            eprintln!("FAIL: unknown mode {other:?} (collectives | timeout)");
            ExitCode::FAILURE
        }
    };
    code
}
