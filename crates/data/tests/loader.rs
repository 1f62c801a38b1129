//! The loader, on shards whose token at position p is p itself (written by the test's own shard writer), so a
//! token's value says where it came from: windows, shifts, coverage, rank splits and resumption are all checked
//! against positions computed here.

mod common;

use std::collections::BTreeSet;

use common::{write_shard_by_spec, TempDir};
use rustspeed_data::{DataError, Loader, LoaderState, TokenShard};

/// A shard of tokens 0, 1, ..., n-1 (u32 wide, so n may exceed 65536).
fn identity_shard(dir: &TempDir, n: usize, split: &str) -> TokenShard {
    let path = dir.join(&format!("{split}-{n}.bin"));
    let tokens: Vec<u32> = (0..n as u32).collect();
    write_shard_by_spec(&path, &tokens, 4);
    TokenShard::open(&path, split).unwrap()
}

/// The next batch as rows of T tokens, with the targets checked to be the inputs shifted by one and each row to
/// be one window (T consecutive positions starting at a multiple of T). Returns the window index of each row.
fn next_windows(loader: &mut Loader, b: usize, t: usize) -> Vec<usize> {
    let (mut tokens, mut targets) = (Vec::new(), Vec::new());
    loader.next_batch(&mut tokens, &mut targets);
    assert_eq!((tokens.len(), targets.len()), (b * t, b * t));
    tokens
        .chunks(t)
        .zip(targets.chunks(t))
        .map(|(row, target_row)| {
            let start = row[0] as usize;
            assert_eq!(start % t, 0, "a window starts at a multiple of T");
            for i in 0..t {
                assert_eq!(row[i] as usize, start + i, "inputs are consecutive tokens");
                assert_eq!(target_row[i], row[i] + 1, "targets are the inputs shifted by one");
            }
            start / t
        })
        .collect()
}

#[test]
fn each_epoch_covers_every_window_once_and_reshuffles() {
    let tmp = TempDir::new("loader-epochs");
    // n = 10·T + 1 + 5: 10 windows, and 5 leftover tokens that are never targets.
    let (t, b) = (8, 3);
    let n = 10 * t + 1 + 5;
    let shard = identity_shard(&tmp, n, "train");
    let mut loader = Loader::new(&shard, b, t, 42, 0, 1).unwrap();
    assert_eq!(loader.windows_per_epoch(), 10);
    // 10 calls read 30 windows = exactly 3 epochs; B = 3 does not divide 10, so batches straddle epoch ends.
    let stream: Vec<usize> = (0..10).flat_map(|_| next_windows(&mut loader, b, t)).collect();
    let epochs: Vec<&[usize]> = stream.chunks(10).collect();
    for (e, epoch) in epochs.iter().enumerate() {
        let sorted: Vec<usize> = epoch.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "epoch {e} is a permutation of the windows");
    }
    assert!(epochs[0] != epochs[1] || epochs[1] != epochs[2], "epochs are reshuffled");
    assert_eq!(loader.epoch(), 3);
    assert_eq!(loader.state().cursor, 0);
}

#[test]
fn every_token_but_the_first_and_the_tail_is_a_target_exactly_once_per_epoch() {
    let tmp = TempDir::new("loader-targets");
    let (t, b) = (5, 2);
    let n = 12 * t + 1 + 3; // 12 windows, 3 tokens of tail
    let shard = identity_shard(&tmp, n, "train");
    let mut loader = Loader::new(&shard, b, t, 7, 0, 1).unwrap();
    let mut targets_seen = Vec::new();
    for _ in 0..6 {
        let (mut tokens, mut targets) = (Vec::new(), Vec::new());
        loader.next_batch(&mut tokens, &mut targets);
        targets_seen.extend(targets);
    }
    targets_seen.sort_unstable();
    assert_eq!(targets_seen, (1..=(12 * t) as u32).collect::<Vec<_>>());
}

#[test]
fn same_seed_same_order_other_seed_other_order() {
    let tmp = TempDir::new("loader-seed");
    let shard = identity_shard(&tmp, 64 * 4 + 1, "train");
    let run = |seed| {
        let mut loader = Loader::new(&shard, 4, 4, seed, 0, 1).unwrap();
        (0..32).flat_map(|_| next_windows(&mut loader, 4, 4)).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn ranks_are_disjoint_and_their_union_is_the_single_rank_order() {
    let tmp = TempDir::new("loader-ranks");
    let (t, b, world) = (4, 2, 3);
    let shard = identity_shard(&tmp, 25 * t + 1, "train"); // 25 windows: global batches of 6 straddle epochs
    let mut single = Loader::new(&shard, world * b, t, 9, 0, 1).unwrap();
    let mut ranks: Vec<Loader> = (0..world).map(|r| Loader::new(&shard, b, t, 9, r, world).unwrap()).collect();
    for step in 0..20 {
        let expected = next_windows(&mut single, world * b, t);
        let per_rank: Vec<Vec<usize>> = ranks.iter_mut().map(|l| next_windows(l, b, t)).collect();
        let union: Vec<usize> = per_rank.concat();
        assert_eq!(union, expected, "step {step}: rank r holds [r·B, (r+1)·B) of the global batch");
        let distinct: BTreeSet<usize> = union.iter().copied().collect();
        assert_eq!(distinct.len(), union.len(), "step {step}: no window is on two ranks");
        for loader in &ranks {
            assert_eq!(loader.state(), single.state(), "every rank is at the single-rank position");
        }
    }
}

#[test]
fn a_restored_loader_continues_with_the_same_batches() {
    let tmp = TempDir::new("loader-resume");
    let (t, b) = (3, 4);
    let shard = identity_shard(&tmp, 30 * t + 1, "train");
    for stop_after in [0, 1, 7, 8, 15] {
        let mut original = Loader::new(&shard, b, t, 1234, 1, 2).unwrap();
        for _ in 0..stop_after {
            next_windows(&mut original, b, t);
        }
        // Through JSON, as a checkpoint manifest would carry it; the new loader's own seed is overridden.
        let saved = LoaderState::from_json(&original.state().to_json()).unwrap();
        assert_eq!(saved, original.state());
        let mut resumed = Loader::new(&shard, b, t, 999, 1, 2).unwrap();
        resumed.restore(&saved).unwrap();
        for step in 0..20 {
            assert_eq!(next_windows(&mut resumed, b, t), next_windows(&mut original, b, t), "step {step}");
        }
        assert_eq!(resumed.state(), original.state());
    }
}

#[test]
fn shuffle_puts_a_window_first_uniformly_often() {
    // Over 4000 seeds, each of 4 windows should open the first epoch about 1000 times: the standard deviation
    // of a count is sqrt(4000 · 1/4 · 3/4) ≈ 27, so 6 standard deviations give the bound.
    const ALLOWED_DEVIATION: usize = 165;
    let tmp = TempDir::new("loader-uniform");
    let shard = identity_shard(&tmp, 4 * 2 + 1, "train");
    let mut counts = [0usize; 4];
    for seed in 0..4000 {
        let mut loader = Loader::new(&shard, 1, 2, seed, 0, 1).unwrap();
        counts[next_windows(&mut loader, 1, 2)[0]] += 1;
    }
    for (window, &count) in counts.iter().enumerate() {
        assert!(count.abs_diff(1000) <= ALLOWED_DEVIATION, "window {window} first {count} times of 4000");
    }
}

#[test]
fn too_few_windows_is_an_error_naming_the_sizes() {
    let tmp = TempDir::new("loader-small");
    let shard = identity_shard(&tmp, 3 * 64 + 1, "validation");
    let err = Loader::new(&shard, 8, 64, 0, 0, 1).unwrap_err();
    assert!(matches!(err, DataError::NotEnoughWindows { windows: 3, window_tokens: 65, needed: 8, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("validation split has 3 windows of 65 tokens, a batch needs 8"), "{message}");
    assert!(message.contains("val_fraction"), "{message}");
    // Four ranks of two windows need eight as well.
    assert!(Loader::new(&shard, 2, 64, 0, 3, 4).is_err());
    assert!(Loader::new(&shard, 3, 64, 0, 0, 1).is_ok());
    let empty = identity_shard(&tmp, 0, "validation");
    assert!(matches!(Loader::new(&empty, 1, 4, 0, 0, 1), Err(DataError::NotEnoughWindows { windows: 0, .. })));
}

#[test]
fn invalid_arguments_and_states_are_errors() {
    let tmp = TempDir::new("loader-args");
    let shard = identity_shard(&tmp, 100, "train");
    for (b, t, rank, world) in [(0, 4, 0, 1), (1, 0, 0, 1), (1, 4, 0, 0), (1, 4, 2, 2)] {
        assert!(matches!(Loader::new(&shard, b, t, 0, rank, world), Err(DataError::InvalidOption { .. })));
    }
    let mut loader = Loader::new(&shard, 2, 4, 0, 0, 1).unwrap();
    let windows = loader.windows_per_epoch() as u64;
    let err = loader.restore(&LoaderState { epoch: 0, cursor: windows, seed: 0 }).unwrap_err();
    assert!(err.to_string().contains(&format!("cursor {windows}")), "{err}");
    let err = LoaderState::from_json(&serde_json::json!({"epoch": 1, "seed": 2})).unwrap_err();
    assert!(err.to_string().contains("\"cursor\""), "{err}");
}

#[test]
fn loaders_and_data_sets_move_to_rank_threads() {
    // The threads communicator runs one rank per thread, each with its own loader over a shared shard.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Loader>();
    assert_send_sync::<TokenShard>();
    assert_send_sync::<rustspeed_data::Dataset>();
    let tmp = TempDir::new("loader-threads");
    let shard = identity_shard(&tmp, 41, "train");
    let per_rank: Vec<Vec<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let mut loader = Loader::new(&shard, 2, 4, 5, rank, 2).unwrap();
                scope.spawn(move || next_windows(&mut loader, 2, 4))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut single = Loader::new(&shard, 4, 4, 5, 0, 1).unwrap();
    assert_eq!(per_rank.concat(), next_windows(&mut single, 4, 4));
}
