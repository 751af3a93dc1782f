//! Small but real payloads: a PNG built byte by byte (stored deflate blocks, real CRC-32 and
//! Adler-32, so any decoder opens it) and a minimal ISO-BMFF/MP4 file (`ftyp` + `moov/mvhd`
//! + `mdat`) that container parsers accept.

/// A `size`×`size` RGB PNG filled with a colour derived from `seed`, with a diagonal stripe so
/// it is not a single colour.
pub fn png(size: u32, seed: u64) -> Vec<u8> {
    let size = size.clamp(1, 256);
    let [r, g, b] = [
        (seed & 0xff) as u8,
        ((seed >> 8) & 0xff) as u8,
        ((seed >> 16) & 0xff) as u8,
    ];
    // Raw scanlines: filter byte 0 then RGB triplets.
    let mut raw = Vec::with_capacity(((size * 3 + 1) * size) as usize);
    for y in 0..size {
        raw.push(0);
        for x in 0..size {
            if x == y {
                raw.extend_from_slice(&[255 - r, 255 - g, 255 - b]);
            } else {
                raw.extend_from_slice(&[r, g, b]);
            }
        }
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&size.to_be_bytes());
    ihdr.extend_from_slice(&size.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), compression 0, filter 0, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream made of uncompressed ("stored") deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, block) in blocks.iter().enumerate() {
        let last = u8::from(i + 1 == blocks.len());
        out.push(last);
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// A minimal MP4: `ftyp` (isom), `moov` with an `mvhd` of `duration_secs`, and an `mdat`
/// holding `payload`. A valid container (ffprobe/MP4Box parse it), without a media track.
pub fn mp4(duration_secs: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ftyp = Vec::new();
    ftyp.extend_from_slice(b"isom");
    ftyp.extend_from_slice(&512u32.to_be_bytes());
    for brand in [b"isom", b"iso2", b"mp41"] {
        ftyp.extend_from_slice(brand);
    }
    mp4_box(&mut out, b"ftyp", &ftyp);

    let mut mvhd = vec![0u8; 4]; // version 0, flags 0
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // creation time
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // modification time
    mvhd.extend_from_slice(&1000u32.to_be_bytes()); // timescale: ms
    mvhd.extend_from_slice(&(duration_secs * 1000).to_be_bytes());
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate 1.0
    mvhd.extend_from_slice(&0x0100u16.to_be_bytes()); // volume 1.0
    mvhd.extend_from_slice(&[0u8; 10]); // reserved
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        mvhd.extend_from_slice(&v.to_be_bytes()); // unity matrix
    }
    mvhd.extend_from_slice(&[0u8; 24]); // pre_defined
    mvhd.extend_from_slice(&1u32.to_be_bytes()); // next track id
    let mut moov = Vec::new();
    mp4_box(&mut moov, b"mvhd", &mvhd);
    mp4_box(&mut out, b"moov", &moov);
    mp4_box(&mut out, b"mdat", payload);
    out
}

fn mp4_box(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
}

/// The top-level boxes of an MP4 as (type, size); `None` when the sizes do not add up.
pub fn mp4_boxes(data: &[u8]) -> Option<Vec<(String, usize)>> {
    let mut boxes = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return None;
        }
        let size = u32::from_be_bytes(rest[0..4].try_into().ok()?) as usize;
        if size < 8 || size > rest.len() {
            return None;
        }
        boxes.push((String::from_utf8_lossy(&rest[4..8]).into_owned(), size));
        rest = &rest[size..];
    }
    Some(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the PNG's chunks, checking every CRC, and inflates the stored blocks back.
    fn check_png(data: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n");
        let mut pos = 8;
        let (mut w, mut h, mut idat) = (0, 0, Vec::new());
        let mut kinds = Vec::new();
        while pos < data.len() {
            let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            let kind = &data[pos + 4..pos + 8];
            let body = &data[pos + 8..pos + 8 + len];
            let crc = u32::from_be_bytes(data[pos + 8 + len..pos + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&data[pos + 4..pos + 8 + len]), "crc of {kind:?}");
            if kind == b"IHDR" {
                w = u32::from_be_bytes(body[0..4].try_into().unwrap());
                h = u32::from_be_bytes(body[4..8].try_into().unwrap());
            }
            if kind == b"IDAT" {
                idat.extend_from_slice(body);
            }
            kinds.push(String::from_utf8_lossy(kind).into_owned());
            pos += 12 + len;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
        // zlib header, one stored block, adler.
        assert_eq!(&idat[..2], &[0x78, 0x01]);
        assert_eq!(idat[2], 1, "single final stored block");
        let len = u16::from_le_bytes([idat[3], idat[4]]) as usize;
        let raw = idat[7..7 + len].to_vec();
        let adler = u32::from_be_bytes(idat[7 + len..].try_into().unwrap());
        assert_eq!(adler, adler32(&raw));
        (w, h, raw)
    }

    #[test]
    fn png_is_well_formed() {
        let data = png(8, 0x336699);
        let (w, h, raw) = check_png(&data);
        assert_eq!((w, h), (8, 8));
        assert_eq!(raw.len(), (8 * 3 + 1) * 8);
        assert_eq!(&raw[1..4], &[255 - 0x99, 255 - 0x66, 255 - 0x33]);
        assert_eq!(&raw[4..7], &[0x99, 0x66, 0x33]);
    }

    #[test]
    fn known_checksums() {
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn mp4_boxes_add_up() {
        let data = mp4(6, b"hello");
        let boxes = mp4_boxes(&data).unwrap();
        let kinds: Vec<_> = boxes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["ftyp", "moov", "mdat"]);
        assert_eq!(boxes.iter().map(|(_, s)| s).sum::<usize>(), data.len());
        assert_eq!(mp4_boxes(&data[..data.len() - 1]), None);
    }
}
