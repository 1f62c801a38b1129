//! The threads backend against serial computations of each collective, with random delays, and its failure
//! behaviour: a missing, dead or confused rank is an error naming it, within the timeout.

use rustspeed_comm::threads::{ThreadComm, ThreadGroup};
use rustspeed_comm::{CommError, Communicator, Op, ReduceOp};
use std::time::{Duration, Instant};

/// Generous for healthy collectives on a loaded 2-core machine.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// Short, for the tests that wait for a missing rank.
const FAILURE_TIMEOUT: Duration = Duration::from_millis(300);

/// Runs `f(rank, comm)` on one thread per rank and returns the results in rank order.
fn run<T: Send>(comms: Vec<ThreadComm>, f: impl Fn(usize, &ThreadComm) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = comms.into_iter().enumerate().map(|(r, c)| s.spawn(move || f(r, &c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Rank `r`'s contribution: distinct, non-integer values.
fn data(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| (rank * 31 + i * 7) as f32 * 0.37 - 5.0).collect()
}

#[test]
fn collectives_equal_their_serial_definitions() {
    for world in 1..=4 {
        let len = 11;
        let counts: Vec<usize> = (0..world).map(|r| r + 1).collect();
        let total: usize = counts.iter().sum();
        let results = run(ThreadGroup::new(world, HEALTHY_TIMEOUT), |rank, comm| {
            comm.inject_delays(Duration::from_millis(3), 17);
            let mut sum = data(rank, len);
            comm.all_reduce(&mut sum, ReduceOp::Sum).unwrap();
            let mut avg = data(rank, len);
            comm.all_reduce(&mut avg, ReduceOp::Avg).unwrap();
            let mut max = data(rank, len);
            comm.all_reduce(&mut max, ReduceOp::Max).unwrap();
            let mut scattered = vec![0.0; counts[rank]];
            comm.reduce_scatter(&data(rank, total), &counts, &mut scattered, ReduceOp::Sum).unwrap();
            let mut gathered = vec![0.0; total];
            comm.all_gather(&data(rank, counts[rank]), &counts, &mut gathered).unwrap();
            let mut bcast = data(rank, len);
            comm.broadcast(&mut bcast, world - 1).unwrap();
            comm.barrier().unwrap();
            (sum, avg, max, scattered, gathered, bcast)
        });
        let serial = |len: usize, f: &dyn Fn(f32, f32) -> f32| -> Vec<f32> {
            (0..len).map(|i| (1..world).fold(data(0, len)[i], |acc, r| f(acc, data(r, len)[i]))).collect()
        };
        let sum = serial(len, &|a, b| a + b);
        let max = serial(len, &|a, b| a.max(b));
        let full_sum = serial(total, &|a, b| a + b);
        for (rank, (s, a, m, sc, g, b)) in results.iter().enumerate() {
            assert_eq!(s, &sum, "world {world} rank {rank}: sum");
            let avg: Vec<f32> = sum.iter().map(|x| x * (1.0 / world as f32)).collect();
            assert_eq!(a, &avg, "avg");
            assert_eq!(m, &max, "max");
            let offset: usize = counts[..rank].iter().sum();
            assert_eq!(sc.as_slice(), &full_sum[offset..offset + counts[rank]], "reduce_scatter");
            let expected: Vec<f32> = (0..world).flat_map(|r| data(r, counts[r])).collect();
            assert_eq!(g, &expected, "all_gather");
            assert_eq!(b, &data(world - 1, len), "broadcast");
        }
    }
}

#[test]
fn many_collectives_in_a_row_with_delays_stay_in_step() {
    let world = 4;
    let results = run(ThreadGroup::new(world, HEALTHY_TIMEOUT), |rank, comm| {
        comm.inject_delays(Duration::from_micros(300), 5);
        (0..200)
            .map(|i| {
                let mut x = vec![(rank + i) as f32];
                comm.all_reduce(&mut x, ReduceOp::Sum).unwrap();
                x[0]
            })
            .collect::<Vec<f32>>()
    });
    let expected: Vec<f32> = (0..200).map(|i| (0..world).map(|r| (r + i) as f32).sum()).collect();
    assert!(results.iter().all(|r| r == &expected));
}

#[test]
fn a_rank_that_never_comes_is_named_within_the_timeout() {
    let comms = ThreadGroup::new(3, FAILURE_TIMEOUT);
    let start = Instant::now();
    let results = run(comms, |rank, comm| {
        if rank == 2 {
            // Stalls past the others' timeout, then finds the group broken.
            std::thread::sleep(FAILURE_TIMEOUT * 3);
            return comm.barrier();
        }
        comm.all_reduce(&mut [1.0], ReduceOp::Sum)
    });
    assert!(start.elapsed() < FAILURE_TIMEOUT * 3 + Duration::from_secs(2));
    let timeouts = results[..2]
        .iter()
        .filter(|r| matches!(r, Err(CommError::Timeout { missing, .. }) if missing == &vec![2]))
        .count();
    let broken = results[..2].iter().filter(|r| matches!(r, Err(CommError::Broken { .. }))).count();
    assert_eq!(timeouts + broken, 2, "{results:?}");
    assert!(timeouts >= 1, "the first rank to give up names rank 2: {results:?}");
    assert!(matches!(&results[2], Err(CommError::Broken { .. })), "{:?}", results[2]);
    let message =
        results.iter().find_map(|r| r.as_ref().err().filter(|e| matches!(e, CommError::Timeout { .. }))).unwrap();
    assert!(message.to_string().contains("rank(s) [2]") && message.to_string().contains("all_reduce"), "{message}");
}

#[test]
fn a_rank_that_dies_breaks_the_group_at_once() {
    let comms = ThreadGroup::new(2, HEALTHY_TIMEOUT);
    let start = Instant::now();
    let results = run(comms, |rank, comm| {
        if rank == 1 {
            return Ok(()); // returns without taking part; its communicator is dropped with the thread's closure
        }
        comm.all_reduce(&mut [1.0], ReduceOp::Sum)
    });
    // Rank 1's communicator is dropped when its thread's closure returns; rank 0 must not wait for the 30 s
    // timeout.
    assert!(start.elapsed() < Duration::from_secs(10), "waited {:?}", start.elapsed());
    match &results[0] {
        Err(CommError::Broken { cause, .. }) => assert!(cause.contains("rank 1 left"), "{cause}"),
        other => panic!("expected a broken group, got {other:?}"),
    }
}

#[test]
fn ranks_calling_different_collectives_is_an_error() {
    let results = run(ThreadGroup::new(2, HEALTHY_TIMEOUT), |rank, comm| match rank {
        0 => comm.barrier(),
        _ => comm.all_reduce(&mut [1.0], ReduceOp::Sum),
    });
    for r in &results {
        assert!(
            matches!(r, Err(CommError::Broken { op: Op::Barrier | Op::AllReduce, cause, .. }) if cause.contains("called")),
            "{r:?}"
        );
    }
}

#[test]
fn wrong_counts_are_size_errors() {
    let results = run(ThreadGroup::new(2, HEALTHY_TIMEOUT), |rank, comm| {
        let mut out = vec![0.0; 2];
        comm.reduce_scatter(&[1.0; 4], &[2, 1], &mut out, ReduceOp::Sum).map(|_| rank)
    });
    assert!(results.iter().all(|r| matches!(r, Err(CommError::Size { op: Op::ReduceScatter, .. }))));
}

#[test]
fn background_collectives_run_in_order_while_the_caller_computes() {
    use rustspeed_comm::background::Background;
    let world = 3;
    let results = run(ThreadGroup::new(world, HEALTHY_TIMEOUT), |rank, comm| {
        let mut a = vec![rank as f32; 5];
        let mut b = vec![10.0 * rank as f32; 2];
        let mut computed = 0.0;
        let gathered = std::thread::scope(|s| {
            let background = Background::start(s, comm);
            let first = background.submit(|c| c.all_reduce(&mut a, ReduceOp::Sum));
            let second = background.submit(|c| c.all_reduce(&mut b, ReduceOp::Max));
            let third = background.submit(move |c| {
                let mut out = vec![0.0; world];
                c.all_gather(&[rank as f32], &vec![1; world], &mut out).map(|_| out)
            });
            // Work on the caller's thread meanwhile.
            computed = (0..1000).map(|i| i as f32).sum();
            first.wait().unwrap();
            second.wait().unwrap();
            third.wait().unwrap()
        });
        (a, b, gathered, computed)
    });
    for (a, b, gathered, computed) in results {
        assert_eq!(a, vec![3.0; 5], "0 + 1 + 2");
        assert_eq!(b, vec![20.0; 2]);
        assert_eq!(gathered, vec![0.0, 1.0, 2.0]);
        assert_eq!(computed, 499500.0);
    }
}
