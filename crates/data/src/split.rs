//! A split (train or validation) as one token sequence over its shards, in order: position `p` is token
//! `p - start(s)` of the shard `s` whose range holds `p`. How the stream is cut into files is invisible here:
//! the same tokens in one shard or in many read the same.

use std::ops::Range;

use crate::shard::TokenShard;

/// The tokens of a split's shards, concatenated. Cloning shares the shards' memory maps.
#[derive(Clone, Debug)]
pub struct TokenSplit {
    name: String,
    shards: Vec<TokenShard>,
    /// `starts[i]` is the stream position of shard i's first token; `starts[shards.len()]` is the length.
    starts: Vec<usize>,
}

impl TokenSplit {
    /// The concatenation of `shards`; `name` names the split in messages ("train", "validation").
    pub fn new(name: &str, shards: Vec<TokenShard>) -> TokenSplit {
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut position = 0;
        starts.push(0);
        for shard in &shards {
            position += shard.len();
            starts.push(position);
        }
        TokenSplit { name: name.to_string(), shards, starts }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        *self.starts.last().expect("starts holds at least the 0 of an empty split")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The split's name for messages: "train", "validation".
    pub fn split(&self) -> &str {
        &self.name
    }

    pub fn shards(&self) -> &[TokenShard] {
        &self.shards
    }

    /// Token `index`; panics past the end (like slice indexing).
    pub fn get(&self, index: usize) -> u32 {
        let mut one = [0];
        self.copy_tokens(index, &mut one);
        one[0]
    }

    /// The tokens in `range`, widened to u32; panics if the range runs past the end (like slice indexing).
    pub fn tokens(&self, range: Range<usize>) -> Vec<u32> {
        let mut out = vec![0; range.len()];
        self.copy_tokens(range.start, &mut out);
        out
    }

    /// Fills `out` with the tokens starting at `start`, across shard boundaries; panics if they run past the end.
    pub fn copy_tokens(&self, start: usize, out: &mut [u32]) {
        let end = start.checked_add(out.len()).filter(|&end| end <= self.len());
        assert!(end.is_some(), "tokens {start}..+{} out of range for a split of {} tokens", out.len(), self.len());
        if out.is_empty() {
            return;
        }
        // The last shard starting at or before `start` (empty shards share a start with the next one).
        let mut shard = self.starts.partition_point(|&s| s <= start) - 1;
        let (mut position, mut filled) = (start, 0);
        while filled < out.len() {
            let offset = position - self.starts[shard];
            let take = (self.shards[shard].len() - offset).min(out.len() - filled);
            self.shards[shard].copy_tokens(offset, &mut out[filled..filled + take]);
            filled += take;
            position += take;
            shard += 1;
        }
    }
}

impl From<TokenShard> for TokenSplit {
    /// A split of one shard, named as the shard is.
    fn from(shard: TokenShard) -> TokenSplit {
        let name = shard.split().to_string();
        TokenSplit::new(&name, vec![shard])
    }
}

impl From<&TokenShard> for TokenSplit {
    fn from(shard: &TokenShard) -> TokenSplit {
        TokenSplit::from(shard.clone())
    }
}

impl From<&TokenSplit> for TokenSplit {
    fn from(split: &TokenSplit) -> TokenSplit {
        split.clone()
    }
}
