//! Byte-pair merging over o200k's ranks, counting the tokens a piece encodes to.

use foldhash::HashMap;

/// o200k's ranks: each token's bytes and its merge priority (lower merges first).
pub struct Ranks(HashMap<Box<[u8]>, u32>);

impl Ranks {
    pub fn new(tokens: impl Iterator<Item = (Vec<u8>, u32)>) -> Self {
        Self(
            tokens
                .map(|(bytes, rank)| (bytes.into_boxed_slice(), rank))
                .collect(),
        )
    }

    fn rank(&self, bytes: &[u8]) -> u32 {
        self.0.get(bytes).copied().unwrap_or(u32::MAX)
    }

    /// Tokens in `piece`: one when it is a token itself, else as many as BPE leaves after
    /// merging, lowest rank first, the adjacent parts whose concatenation is a token.
    pub fn count(&self, piece: &[u8]) -> u64 {
        if piece.len() <= 1 || self.0.contains_key(piece) {
            return u64::from(!piece.is_empty());
        }
        // (start of a part, rank of the part starting here merged with the next one).
        let mut parts: Vec<(usize, u32)> = (0..piece.len() - 1)
            .map(|i| (i, self.rank(&piece[i..i + 2])))
            .collect();
        parts.push((piece.len() - 1, u32::MAX));
        parts.push((piece.len(), u32::MAX));
        // The rank of parts[i] merged with parts[i + 1], looked up before parts[i + 1] is
        // removed (hence i + 3).
        let merged = |parts: &[(usize, u32)], i: usize| {
            if i + 3 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 3].0])
            } else {
                u32::MAX
            }
        };
        while let Some((i, _)) = parts[..parts.len() - 1]
            .iter()
            .enumerate()
            .filter(|(_, p)| p.1 != u32::MAX)
            .min_by_key(|(_, p)| p.1)
        {
            if i > 0 {
                parts[i - 1].1 = merged(&parts, i - 1);
            }
            parts[i].1 = merged(&parts, i);
            parts.remove(i + 1);
        }
        (parts.len() - 1) as u64
    }
}
