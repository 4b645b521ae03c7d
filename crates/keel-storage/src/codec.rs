//! The record batch codecs, in the framings Kafka clients write: gzip
//! (RFC 1952, possibly several members), snappy in xerial's block framing
//! (Java and librdkafka; raw snappy blocks are accepted too), lz4 in the LZ4
//! frame format, and zstd frames.
//!
//! Decompression is always bounded: a client batch of a few kilobytes can
//! expand to gigabytes, so every decoder stops one byte past the caller's
//! limit and reports the batch instead of allocating on.

use std::io::{Read, Write};

use keel_types::limits::SOCKET_REQUEST_BYTES_MAX;

use crate::batch::Compression;
use crate::error::{Result, StorageError};

/// The most bytes one batch's records may decompress to when the broker
/// must look inside it (key checks on compacted topics, the cleaner). The
/// broker already budgets this much memory for one request frame, so a
/// decompression bomb costs no more than the largest request we accept.
pub const RECORDS_UNCOMPRESSED_BYTES_MAX: usize = SOCKET_REQUEST_BYTES_MAX as usize;

/// xerial's stream header: magic, then version and compatible version (both 1).
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_BYTES: usize = 16;
/// Java's `SnappyOutputStream` default block size, which Kafka uses.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

/// Kafka's default levels (`compression.gzip.level`, `compression.lz4.level`,
/// `compression.zstd.level`), used when the cleaner recompresses a batch.
const GZIP_LEVEL: u32 = 6;
const LZ4_LEVEL: u32 = 9;
const ZSTD_LEVEL: i32 = 3;

fn corrupt(codec: Compression, what: impl std::fmt::Display) -> StorageError {
    StorageError::CorruptMessage(format!("{codec:?} records: {what}"))
}

fn too_large(output_bytes_max: usize) -> StorageError {
    StorageError::InvalidRecord(format!(
        "records decompress to more than {output_bytes_max} bytes"
    ))
}

/// Decompresses one batch's records section. More than `output_bytes_max`
/// bytes of output is `InvalidRecord`; input the codec cannot decode is
/// `CorruptMessage`.
pub fn decompress(
    compression: Compression,
    input: &[u8],
    output_bytes_max: usize,
) -> Result<Vec<u8>> {
    match compression {
        Compression::None => {
            if input.len() > output_bytes_max {
                return Err(too_large(output_bytes_max));
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => read_bounded(
            compression,
            flate2::read::MultiGzDecoder::new(input),
            output_bytes_max,
        ),
        Compression::Snappy => {
            if input.starts_with(&XERIAL_MAGIC) {
                snappy_xerial(input, output_bytes_max)
            } else {
                let mut out = Vec::new();
                snappy_block(input, output_bytes_max, &mut out)?;
                Ok(out)
            }
        }
        Compression::Lz4 => {
            let mut decoder = lz4::Decoder::new(input).map_err(|e| corrupt(compression, e))?;
            let out = read_bounded(compression, &mut decoder, output_bytes_max)?;
            // A frame cut short reads as a short output; `finish` tells.
            decoder.finish().1.map_err(|e| corrupt(compression, e))?;
            Ok(out)
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| corrupt(compression, e))?;
            read_bounded(compression, decoder, output_bytes_max)
        }
        Compression::Unknown(codec) => Err(StorageError::InvalidRecord(format!(
            "unknown compression codec {codec}"
        ))),
    }
}

fn read_bounded(
    compression: Compression,
    reader: impl Read,
    output_bytes_max: usize,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(output_bytes_max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(compression, e))?;
    if out.len() > output_bytes_max {
        return Err(too_large(output_bytes_max));
    }
    Ok(out)
}

/// Appends one raw snappy block to `out`, checking its declared length
/// against the limit before allocating.
fn snappy_block(block: &[u8], output_bytes_max: usize, out: &mut Vec<u8>) -> Result<()> {
    let len = snap::raw::decompress_len(block).map_err(|e| corrupt(Compression::Snappy, e))?;
    if len > output_bytes_max - out.len() {
        return Err(too_large(output_bytes_max));
    }
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| corrupt(Compression::Snappy, e))?;
    out.truncate(start + written);
    Ok(())
}

fn snappy_xerial(input: &[u8], output_bytes_max: usize) -> Result<Vec<u8>> {
    if input.len() < XERIAL_HEADER_BYTES {
        return Err(corrupt(Compression::Snappy, "xerial header cut short"));
    }
    let mut out = Vec::new();
    let mut pos = XERIAL_HEADER_BYTES;
    while pos < input.len() {
        let len_bytes = input
            .get(pos..pos + 4)
            .ok_or_else(|| corrupt(Compression::Snappy, "xerial block length cut short"))?;
        let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        pos += 4;
        let block = input
            .get(pos..pos.saturating_add(len))
            .ok_or_else(|| corrupt(Compression::Snappy, "xerial block runs past the batch"))?;
        snappy_block(block, output_bytes_max, &mut out)?;
        pos += len;
    }
    Ok(out)
}

/// Compresses one batch's records section with `compression`, framed as
/// Kafka's Java client frames it, so every client can read it back.
pub fn compress(compression: Compression, input: &[u8]) -> Result<Vec<u8>> {
    let failed = StorageError::Io;
    match compression {
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(GZIP_LEVEL));
            encoder.write_all(input).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        Compression::Snappy => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + input.len());
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| StorageError::InvalidRecord(format!("snappy: {e}")))?;
                let len = u32::try_from(compressed.len()).expect("a 32 KiB block compresses small");
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        Compression::Lz4 => {
            // Kafka's Java reader (`KafkaLZ4BlockInputStream`) supports
            // only independent blocks; its writer uses 64 KiB blocks and no
            // checksums beyond the header's.
            let mut encoder = lz4::EncoderBuilder::new()
                .level(LZ4_LEVEL)
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .build(Vec::new())
                .map_err(failed)?;
            encoder.write_all(input).map_err(failed)?;
            let (out, result) = encoder.finish();
            result.map_err(failed)?;
            Ok(out)
        }
        Compression::Zstd => zstd::bulk::compress(input, ZSTD_LEVEL).map_err(failed),
        Compression::Unknown(codec) => Err(StorageError::InvalidRecord(format!(
            "unknown compression codec {codec}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn round_trips_every_codec() {
        let input = sample();
        for codec in CODECS {
            let packed = compress(codec, &input).unwrap();
            if codec != Compression::None {
                assert!(packed.len() < input.len() / 2, "{codec:?}");
            }
            assert_eq!(decompress(codec, &packed, input.len()).unwrap(), input);
            assert_eq!(
                decompress(codec, &compress(codec, b"").unwrap(), 0).unwrap(),
                b""
            );
        }
    }

    #[test]
    fn output_is_bounded() {
        let bomb = vec![0u8; 10 << 20];
        for codec in CODECS {
            let packed = compress(codec, &bomb).unwrap();
            assert!(
                matches!(
                    decompress(codec, &packed, bomb.len() - 1),
                    Err(StorageError::InvalidRecord(_))
                ),
                "{codec:?}"
            );
            assert_eq!(
                decompress(codec, &packed, bomb.len()).unwrap().len(),
                bomb.len()
            );
        }
    }

    #[test]
    fn garbage_is_corrupt_never_a_panic() {
        let input = sample();
        for codec in CODECS[1..].iter().copied() {
            let packed = compress(codec, &input).unwrap();
            for cut in [1, packed.len() / 2, packed.len() - 1] {
                let result = decompress(codec, &packed[..cut], input.len());
                assert!(
                    result.is_err() || result.unwrap() != input,
                    "{codec:?} cut {cut}"
                );
            }
            let mut flipped = packed.clone();
            for i in (0..flipped.len()).step_by(7) {
                flipped[i] ^= 0x5a;
            }
            let _ = decompress(codec, &flipped, input.len());
            assert!(decompress(codec, b"not compressed at all", 1 << 20).is_err());
        }
    }

    /// librdkafka may send raw snappy blocks without xerial framing.
    #[test]
    fn reads_raw_snappy_and_multi_member_gzip() {
        let input = sample();
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        assert_eq!(
            decompress(Compression::Snappy, &raw, input.len()).unwrap(),
            input
        );
        let (a, b) = input.split_at(1000);
        let mut two = compress(Compression::Gzip, a).unwrap();
        two.extend(compress(Compression::Gzip, b).unwrap());
        assert_eq!(
            decompress(Compression::Gzip, &two, input.len()).unwrap(),
            input
        );
    }

    /// Pins the framing Java clients expect: xerial's header, LZ4's frame
    /// magic with independent blocks, gzip's magic, zstd's frame magic.
    #[test]
    fn framings_are_kafkas() {
        let snappy = compress(Compression::Snappy, b"abc").unwrap();
        assert_eq!(
            &snappy[..16],
            b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01"
        );
        let lz4 = compress(Compression::Lz4, b"abc").unwrap();
        assert_eq!(&lz4[..4], &[0x04, 0x22, 0x4d, 0x18]);
        let flg = lz4[4];
        assert_eq!(flg & 0x20, 0x20, "block independence");
        assert_eq!(flg & 0x14, 0, "no block or content checksum");
        assert_eq!(lz4[5] >> 4 & 0x7, 4, "64 KiB blocks");
        assert_eq!(
            &compress(Compression::Gzip, b"abc").unwrap()[..2],
            &[0x1f, 0x8b]
        );
        assert_eq!(
            &compress(Compression::Zstd, b"abc").unwrap()[..4],
            &[0x28, 0xb5, 0x2f, 0xfd]
        );
    }
}
