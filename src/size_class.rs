//! Object size classes and chunk size classes.
//!
//! Both use one scheme over a granule `g`: sizes of 1..=8 granules are
//! exact classes, then every power of two is split into 8 steps. The worst
//! rounding above 8 granules is 1/9 of the class size (under 12.5%); below
//! it, a request rounds up by less than one granule.
//!
//! * Object classes: `g` = 16 bytes (every block is 16-byte aligned, as C's
//!   `max_align_t` requires), 80 classes from 16 B to 64 KiB. Sizes up to
//!   1 KiB use a lookup table, larger ones a leading-zero count. Each class
//!   has a slab chunk size: the smallest multiple of 64 KiB that holds the
//!   header and 4 blocks.
//! * Chunk classes: `g` = 64 KiB (the chunk granule), 25 classes from 64 KiB
//!   to 2.25 MiB, used by the provider's caches.

/// Bytes in an object granule; also the minimum alignment of every block.
pub const OBJ_GRANULE: usize = 16;
/// Number of object classes.
pub const NUM_CLASSES: usize = 80;
/// Largest size served from slab chunks.
pub const MAX_SMALL: usize = 64 * 1024;
/// Largest size resolved through the lookup table.
pub const TABLE_MAX: usize = 1024;

/// Chunk granule: chunks are aligned to and sized in multiples of this.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// log2 of [`CHUNK_SIZE`].
pub const CHUNK_SHIFT: u32 = 16;
/// Bytes at the start of every slab chunk before its first block (the
/// chunk header; `chunk::HEADER_SIZE` is defined from this).
pub const SLAB_HEADER: usize = 128;
/// Every slab chunk holds at least this many blocks.
pub const MIN_SLAB_BLOCKS: usize = 4;
/// The most blocks a slab chunk holds (16-byte blocks in a 64 KiB chunk):
/// a chunk's `used` count is always at most this.
pub const MAX_SLAB_BLOCKS: u32 = ((CHUNK_SIZE - SLAB_HEADER) / OBJ_GRANULE) as u32;
/// Number of chunk classes (64 KiB .. 2.25 MiB).
pub const NUM_CHUNK_CLASSES: usize = 25;
/// Largest footprint an oversized (cacheable) chunk may have; larger
/// objects are huge mappings. The first class above 2 MiB, so that a
/// 2 MiB object with its header is still charged by the page, not by the
/// 64 KiB granule of a huge mapping.
pub const MAX_CHUNK_CLASS_SIZE: usize = 2304 * 1024;

/// Class index of a size measured in granules (`units >= 1`).
#[inline]
const fn class_of_units(units: usize) -> usize {
    if units <= 8 {
        return units - 1;
    }
    let s = units - 1;
    let b = (usize::BITS - 1 - s.leading_zeros()) as usize; // floor(log2 s), >= 3
    8 + (b - 3) * 8 + ((s >> (b - 3)) & 7)
}

/// Granules in class `c`.
#[inline]
const fn units_of_class(c: usize) -> usize {
    if c < 8 {
        return c + 1;
    }
    let k = (c - 8) / 8 + 3;
    let j = (c - 8) % 8 + 1;
    (1 << k) + j * (1 << (k - 3))
}

/// The class of every size up to [`TABLE_MAX`], by granule count (entry 0
/// serves size 0).
pub const fn build_table() -> [u8; TABLE_MAX / OBJ_GRANULE + 1] {
    let mut t = [0u8; TABLE_MAX / OBJ_GRANULE + 1];
    let mut i = 1;
    while i < t.len() {
        t[i] = class_of_units(i) as u8;
        i += 1;
    }
    t
}

/// Class by granule count, for sizes up to [`TABLE_MAX`]. Entry 0 serves
/// size 0 (class 0).
static TABLE: [u8; TABLE_MAX / OBJ_GRANULE + 1] = build_table();

const fn build_sizes() -> [u32; NUM_CLASSES] {
    let mut t = [0u32; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = (units_of_class(c) * OBJ_GRANULE) as u32;
        c += 1;
    }
    t
}

/// Block size of every class.
static SIZES: [u32; NUM_CLASSES] = build_sizes();

/// Class for `size <= MAX_SMALL`.
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    check!(size <= MAX_SMALL, "small sizes only");
    if size <= TABLE_MAX {
        TABLE[size.div_ceil(OBJ_GRANULE)] as usize
    } else {
        class_of_units(size.div_ceil(OBJ_GRANULE))
    }
}

/// Block size of class `c`.
#[inline(always)]
pub fn class_size(c: usize) -> usize {
    SIZES[c] as usize
}

const fn build_slab_chunks() -> [u32; NUM_CLASSES] {
    let mut t = [0u32; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        let need = SLAB_HEADER + MIN_SLAB_BLOCKS * units_of_class(c) * OBJ_GRANULE;
        t[c] = (need.div_ceil(CHUNK_SIZE) * CHUNK_SIZE) as u32;
        c += 1;
    }
    t
}

/// Slab chunk bytes per class.
static SLAB_CHUNKS: [u32; NUM_CLASSES] = build_slab_chunks();

/// Bytes of the slab chunk that serves class `c`: the smallest multiple of
/// 64 KiB holding the header and [`MIN_SLAB_BLOCKS`] blocks. That is 64 KiB
/// for blocks up to 16 KiB − 32 B, and 128 KiB to 320 KiB above, so a
/// heap that touches every medium class keeps little committed per class.
#[inline]
pub fn slab_chunk_size(c: usize) -> usize {
    SLAB_CHUNKS[c] as usize
}

/// Chunk class of a footprint (`0 < bytes <= MAX_CHUNK_CLASS_SIZE`).
#[inline]
pub fn chunk_class_of(bytes: usize) -> usize {
    check!(
        bytes > 0 && bytes <= MAX_CHUNK_CLASS_SIZE,
        "chunk class sizes in range"
    );
    class_of_units(bytes.div_ceil(CHUNK_SIZE))
}

/// Bytes of chunk class `c`.
#[inline]
pub fn chunk_class_size(c: usize) -> usize {
    units_of_class(c) * CHUNK_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_increasing_and_end_at_max_small() {
        for c in 1..NUM_CLASSES {
            assert!(class_size(c) > class_size(c - 1));
            assert_eq!(class_size(c) % OBJ_GRANULE, 0);
        }
        assert_eq!(class_size(NUM_CLASSES - 1), MAX_SMALL);
        assert_eq!(
            chunk_class_size(NUM_CHUNK_CLASSES - 1),
            MAX_CHUNK_CLASS_SIZE
        );
        assert_eq!(chunk_class_of(MAX_CHUNK_CLASS_SIZE), NUM_CHUNK_CLASSES - 1);
    }

    #[test]
    fn every_size_gets_the_smallest_fitting_class_within_the_waste_bound() {
        for size in 0..=MAX_SMALL {
            let c = class_of(size);
            let cs = class_size(c);
            assert!(cs >= size, "size {size} class {c} too small");
            if c > 0 {
                assert!(
                    class_size(c - 1) < size,
                    "size {size} not in smallest class"
                );
            }
            if size > 8 * OBJ_GRANULE {
                // Above the exact classes: waste at most 1/9 of the block
                // (under 12.5%).
                assert!((cs - size) * 9 <= cs, "size {size} -> {cs} wastes too much");
                assert!((cs - size) * 8 < cs);
            } else {
                assert!(cs - size.max(1) < OBJ_GRANULE);
            }
        }
    }

    #[test]
    fn table_and_formula_agree() {
        for size in 1..=TABLE_MAX {
            assert_eq!(class_of(size), class_of_units(size.div_ceil(OBJ_GRANULE)));
        }
    }

    #[test]
    fn chunk_classes_cover_footprints() {
        for units in 1..=MAX_CHUNK_CLASS_SIZE / CHUNK_SIZE {
            let bytes = units * CHUNK_SIZE;
            let c = chunk_class_of(bytes);
            assert!(chunk_class_size(c) >= bytes);
            assert!(c == 0 || chunk_class_size(c - 1) < bytes);
            assert!((chunk_class_size(c) - bytes) * 8 < chunk_class_size(c));
        }
        assert_eq!(chunk_class_of(slab_chunk_size(0)), 0);
        for c in 0..NUM_CLASSES {
            // Slab chunks are exact chunk classes, so cached ones are reused.
            let s = slab_chunk_size(c);
            assert_eq!(chunk_class_size(chunk_class_of(s)), s);
        }
    }

    #[test]
    fn slab_chunks_are_small_and_hold_enough_blocks() {
        for c in 0..NUM_CLASSES {
            let s = slab_chunk_size(c);
            assert!(
                (s - SLAB_HEADER) / class_size(c) >= MIN_SLAB_BLOCKS,
                "class {c}"
            );
            assert!(
                s - CHUNK_SIZE < SLAB_HEADER + MIN_SLAB_BLOCKS * class_size(c),
                "class {c} chunk larger than needed"
            );
        }
        assert_eq!(slab_chunk_size(NUM_CLASSES - 1), 320 * 1024);
    }
}
