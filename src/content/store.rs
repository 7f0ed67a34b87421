//! A git object store read with bounded memory: loose objects and packs (index v2),
//! every object streamed through zlib with a fixed buffer. libgit2's pack backend has
//! no streaming reads (`git_odb_open_rstream` works on loose objects only), so reading
//! a 200 MB blob through it holds the whole blob, and more, in memory.
//!
//! A delta's copy instructions reach anywhere in its base, so the bases of a delta
//! chain are written out first (in memory when small, else to an unlinked temporary
//! file beside the objects directory); the object itself is then produced as a stream,
//! instruction by instruction. Nothing here checks an object's id: the caller hashes
//! what it reads (`content::Verified`) and compares at the end.
//!
//! Formats (git's Documentation/gitformat-pack.txt): a pack entry starts with its type
//! (3 bits) and size (varint); OFS_DELTA names its base by a negative offset in the
//! same pack, REF_DELTA by object id; a delta is the base's size, the result's size,
//! then copy (from the base) and insert (literal) instructions.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flate2::bufread::ZlibDecoder;
use git2::Oid;

/// Objects this small are resolved in memory; larger bases go to a temporary file.
const IN_MEMORY: u64 = 1 << 20;
/// git's own limit on delta chains is 4095 (pack.depth); anything deeper is damage.
const MAX_CHAIN: usize = 10_000;

const OBJ_BLOB: u8 = 3;
const OBJ_OFS_DELTA: u8 = 6;
const OBJ_REF_DELTA: u8 = 7;

/// A repository's `objects` directory, with its pack indexes opened.
pub(crate) struct Store {
    dir: PathBuf,
    packs: Vec<Pack>,
}

struct Pack {
    idx: File,
    count: u32,
    data: File,
}

/// Where an object starts.
enum Location {
    Loose(PathBuf),
    Packed { pack: usize, offset: u64 },
}

/// One step of a delta chain: where its delta data starts and how long it decodes.
struct Delta {
    pack: usize,
    data_offset: u64,
}

/// A resolved base: random access for copy instructions.
enum Base {
    Memory(Vec<u8>),
    Temp { file: File, len: u64 },
}

fn damaged(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl Store {
    pub(crate) fn open(dir: &Path) -> io::Result<Store> {
        let mut packs = Vec::new();
        let pack_dir = dir.join("pack");
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&pack_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "idx"))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        names.sort();
        for idx_path in names {
            let idx = File::open(&idx_path)?;
            let mut head = [0u8; 8];
            idx.read_exact_at(&mut head, 0)?;
            if head != [0xff, b't', b'O', b'c', 0, 0, 0, 2] {
                return Err(damaged(format!(
                    "{} is not a version 2 pack index",
                    idx_path.display()
                )));
            }
            let count = read_u32(&idx, 8 + 255 * 4)?;
            let data = File::open(idx_path.with_extension("pack"))?;
            packs.push(Pack { idx, count, data });
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            packs,
        })
    }

    /// A blob's size and a stream of its content.
    pub(crate) fn blob(&self, id: Oid) -> io::Result<(u64, Box<dyn Read + Send>)> {
        let (kind, size, reader) = self.object(id)?;
        if kind != OBJ_BLOB {
            return Err(damaged(format!("object {id} is not a blob")));
        }
        Ok((size, reader))
    }

    fn locate(&self, id: Oid) -> io::Result<Location> {
        let hex = id.to_string();
        let loose = self.dir.join(&hex[..2]).join(&hex[2..]);
        if loose.is_file() {
            return Ok(Location::Loose(loose));
        }
        for (i, p) in self.packs.iter().enumerate() {
            if let Some(offset) = p.find(id)? {
                return Ok(Location::Packed { pack: i, offset });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("object {id} is missing"),
        ))
    }

    /// Any object's type, size and content stream.
    fn object(&self, id: Oid) -> io::Result<(u8, u64, Box<dyn Read + Send>)> {
        match self.locate(id)? {
            Location::Loose(path) => loose(&path),
            Location::Packed { pack, offset } => self.packed(pack, offset),
        }
    }

    fn packed(&self, pack: usize, offset: u64) -> io::Result<(u8, u64, Box<dyn Read + Send>)> {
        let (kind, size, data_offset) = self.entry_header(pack, offset)?;
        if kind != OBJ_OFS_DELTA && kind != OBJ_REF_DELTA {
            let stream = self.inflate(pack, data_offset)?;
            return Ok((kind, size, Box::new(stream.take(size))));
        }
        // Walk down to a whole object, then resolve the chain's bases upward; the
        // last delta (the object itself) is applied as a stream.
        let mut chain = Vec::new();
        let (mut at_pack, mut at) = (pack, offset);
        let (base_kind, base) = loop {
            if chain.len() > MAX_CHAIN {
                return Err(damaged("a delta chain does not end"));
            }
            let (kind, _, data_offset) = self.entry_header(at_pack, at)?;
            let next = match kind {
                OBJ_OFS_DELTA => {
                    let (back, start) = self.ofs_base(at_pack, data_offset)?;
                    let base_at = at
                        .checked_sub(back)
                        .ok_or_else(|| damaged("a delta's base lies before its pack"))?;
                    chain.push(Delta {
                        pack: at_pack,
                        data_offset: start,
                    });
                    Location::Packed {
                        pack: at_pack,
                        offset: base_at,
                    }
                }
                OBJ_REF_DELTA => {
                    let mut raw = [0u8; 20];
                    self.packs[at_pack]
                        .data
                        .read_exact_at(&mut raw, data_offset)?;
                    chain.push(Delta {
                        pack: at_pack,
                        data_offset: data_offset + 20,
                    });
                    self.locate(Oid::from_bytes(&raw).map_err(|e| damaged(e.message()))?)?
                }
                _ => break (kind, self.whole(at_pack, at)?),
            };
            match next {
                Location::Packed { pack, offset } => (at_pack, at) = (pack, offset),
                Location::Loose(path) => {
                    let (kind, size, r) = loose(&path)?;
                    break (kind, self.resolve(size, r)?);
                }
            }
        };
        let last = chain.remove(0);
        let mut base = base;
        for d in chain.iter().rev() {
            let (size, reader) = self.apply(d, base)?;
            base = self.resolve(size, Box::new(reader))?;
        }
        let (size, reader) = self.apply(&last, base)?;
        Ok((base_kind, size, Box::new(reader)))
    }

    /// A whole (not delta) object of a pack, resolved for random access.
    fn whole(&self, pack: usize, offset: u64) -> io::Result<Base> {
        let (_, size, data_offset) = self.entry_header(pack, offset)?;
        let stream = self.inflate(pack, data_offset)?;
        self.resolve(size, Box::new(stream.take(size)))
    }

    /// Reads `size` bytes of a stream into memory or an unlinked temporary file.
    fn resolve(&self, size: u64, mut r: Box<dyn Read + Send + '_>) -> io::Result<Base> {
        if size <= IN_MEMORY {
            let mut v = Vec::with_capacity(size as usize);
            r.read_to_end(&mut v)?;
            check_len(v.len() as u64, size)?;
            return Ok(Base::Memory(v));
        }
        let mut file = self.temp_file()?;
        let copied = io::copy(&mut r, &mut file)?;
        check_len(copied, size)?;
        file.flush()?;
        Ok(Base::Temp { file, len: size })
    }

    /// An unlinked file beside the objects directory: on the same disk as the clone,
    /// not in /tmp, which is often in RAM on small devices.
    fn temp_file(&self) -> io::Result<File> {
        let parent = self.dir.parent().unwrap_or(&self.dir);
        for n in 0..1000u32 {
            let path = parent.join(format!(".fleet-agent-delta-{}-{n}", std::process::id()));
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => {
                    std::fs::remove_file(&path)?;
                    return Ok(f);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "cannot create a temporary file for a delta",
        ))
    }

    /// The delta at `d` applied to `base`: the result's size and a stream of it.
    fn apply(&self, d: &Delta, base: Base) -> io::Result<(u64, DeltaReader)> {
        let mut delta = self.inflate(d.pack, d.data_offset)?;
        let base_len = varint(&mut delta)?;
        let size = varint(&mut delta)?;
        if base_len != base.len() {
            return Err(damaged(format!(
                "a delta expects a base of {base_len} bytes, found {}",
                base.len()
            )));
        }
        Ok((
            size,
            DeltaReader {
                delta,
                base,
                step: Step::Command,
                left: size,
            },
        ))
    }

    /// Type, size and where the data starts, of the pack entry at `offset`.
    fn entry_header(&self, pack: usize, offset: u64) -> io::Result<(u8, u64, u64)> {
        let mut head = [0u8; 16];
        let n = read_at_most(&self.packs[pack].data, &mut head, offset)?;
        let mut i = 0;
        let byte = |i: usize| -> io::Result<u8> {
            head[..n]
                .get(i)
                .copied()
                .ok_or_else(|| damaged("a pack entry is cut short"))
        };
        let first = byte(i)?;
        let kind = (first >> 4) & 7;
        let mut size = u64::from(first & 15);
        let mut shift = 4;
        let mut b = first;
        while b & 0x80 != 0 {
            i += 1;
            b = byte(i)?;
            if shift > 57 {
                return Err(damaged("a pack entry's size is too large"));
            }
            size |= u64::from(b & 0x7f) << shift;
            shift += 7;
        }
        Ok((kind, size, offset + i as u64 + 1))
    }

    /// An OFS_DELTA's distance back to its base, and where its delta data starts.
    fn ofs_base(&self, pack: usize, at: u64) -> io::Result<(u64, u64)> {
        let mut raw = [0u8; 10];
        let n = read_at_most(&self.packs[pack].data, &mut raw, at)?;
        let mut i = 0;
        let mut b = *raw
            .first()
            .filter(|_| n > 0)
            .ok_or_else(|| damaged("cut short"))?;
        let mut back = u64::from(b & 0x7f);
        while b & 0x80 != 0 {
            i += 1;
            if i >= n {
                return Err(damaged("a delta's base offset is cut short"));
            }
            b = raw[i];
            back = ((back + 1) << 7) | u64::from(b & 0x7f);
        }
        Ok((back, at + i as u64 + 1))
    }

    fn inflate(&self, pack: usize, at: u64) -> io::Result<ZlibDecoder<BufReader<File>>> {
        let mut f = self.packs[pack].data.try_clone()?;
        f.seek(SeekFrom::Start(at))?;
        Ok(ZlibDecoder::new(BufReader::with_capacity(64 * 1024, f)))
    }
}

impl Pack {
    /// The offset of `id` in this pack, from its index (v2: fan-out, sorted ids,
    /// CRCs, 31-bit offsets, then 64-bit offsets for the large ones).
    fn find(&self, id: Oid) -> io::Result<Option<u64>> {
        let want = id.as_bytes();
        let first = usize::from(want[0]);
        let mut lo = if first == 0 {
            0
        } else {
            read_u32(&self.idx, 8 + (first as u64 - 1) * 4)?
        };
        let mut hi = read_u32(&self.idx, 8 + first as u64 * 4)?;
        let ids = 8 + 256 * 4;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let mut got = [0u8; 20];
            self.idx
                .read_exact_at(&mut got, ids + u64::from(mid) * 20)?;
            match got.as_slice().cmp(want) {
                std::cmp::Ordering::Equal => return self.offset(mid).map(Some),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    fn offset(&self, i: u32) -> io::Result<u64> {
        let n = u64::from(self.count);
        let small = 8 + 256 * 4 + n * 24;
        let v = read_u32(&self.idx, small + u64::from(i) * 4)?;
        if v & 0x8000_0000 == 0 {
            return Ok(u64::from(v));
        }
        let mut raw = [0u8; 8];
        let large = small + n * 4 + u64::from(v & 0x7fff_ffff) * 8;
        self.idx.read_exact_at(&mut raw, large)?;
        Ok(u64::from_be_bytes(raw))
    }
}

impl Base {
    fn len(&self) -> u64 {
        match self {
            Base::Memory(v) => v.len() as u64,
            Base::Temp { len, .. } => *len,
        }
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        match self {
            Base::Memory(v) => {
                let start = at as usize;
                buf.copy_from_slice(&v[start..start + buf.len()]);
                Ok(())
            }
            Base::Temp { file, .. } => file.read_exact_at(buf, at),
        }
    }
}

/// A loose object: zlib over `<type> <size>\0<content>`.
fn loose(path: &Path) -> io::Result<(u8, u64, Box<dyn Read + Send>)> {
    let mut z = ZlibDecoder::new(BufReader::new(File::open(path)?));
    let mut header = Vec::new();
    let mut byte = [0u8];
    loop {
        z.read_exact(&mut byte)?;
        if byte[0] == 0 {
            break;
        }
        header.push(byte[0]);
        if header.len() > 32 {
            return Err(damaged(format!("{} has no object header", path.display())));
        }
    }
    let header = String::from_utf8_lossy(&header);
    let (kind, size) = header
        .split_once(' ')
        .and_then(|(k, s)| Some((k, s.parse::<u64>().ok()?)))
        .ok_or_else(|| damaged(format!("{} has no object header", path.display())))?;
    let kind = match kind {
        "commit" => 1,
        "tree" => 2,
        "blob" => OBJ_BLOB,
        "tag" => 4,
        _ => return Err(damaged(format!("{}: unknown object type", path.display()))),
    };
    Ok((kind, size, Box::new(z.take(size))))
}

/// Where a delta reader is in its instruction stream.
enum Step {
    Command,
    Copy { from: u64, left: u64 },
    Insert { left: u64 },
}

/// A delta applied as a stream: copies come from the resolved base, inserts from the
/// delta itself.
struct DeltaReader {
    delta: ZlibDecoder<BufReader<File>>,
    base: Base,
    step: Step,
    left: u64,
}

impl Read for DeltaReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if buf.is_empty() || self.left == 0 {
                return Ok(0);
            }
            let room = (buf.len() as u64).min(self.left);
            match &mut self.step {
                Step::Command => self.step = self.command()?,
                Step::Copy { from, left } => {
                    let n = room.min(*left) as usize;
                    self.base.read_at(&mut buf[..n], *from)?;
                    *from += n as u64;
                    *left -= n as u64;
                    if *left == 0 {
                        self.step = Step::Command;
                    }
                    self.left -= n as u64;
                    return Ok(n);
                }
                Step::Insert { left } => {
                    let n = room.min(*left) as usize;
                    self.delta.read_exact(&mut buf[..n])?;
                    *left -= n as u64;
                    if *left == 0 {
                        self.step = Step::Command;
                    }
                    self.left -= n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

impl DeltaReader {
    fn command(&mut self) -> io::Result<Step> {
        let cmd = byte(&mut self.delta)?;
        if cmd & 0x80 == 0 {
            if cmd == 0 {
                return Err(damaged("a delta has the reserved instruction 0"));
            }
            return Ok(Step::Insert {
                left: u64::from(cmd),
            });
        }
        let mut from = 0u64;
        for i in 0..4 {
            if cmd & (1 << i) != 0 {
                from |= u64::from(byte(&mut self.delta)?) << (8 * i);
            }
        }
        let mut len = 0u64;
        for i in 0..3 {
            if cmd & (0x10 << i) != 0 {
                len |= u64::from(byte(&mut self.delta)?) << (8 * i);
            }
        }
        if len == 0 {
            len = 0x10000;
        }
        if from + len > self.base.len() {
            return Err(damaged("a delta copies past the end of its base"));
        }
        Ok(Step::Copy { from, left: len })
    }
}

fn byte(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8];
    r.read_exact(&mut b).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => damaged("a delta is cut short"),
        _ => e,
    })?;
    Ok(b[0])
}

/// A delta header's size: 7 bits a byte, least significant first.
fn varint(r: &mut impl Read) -> io::Result<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = byte(r)?;
        if shift > 63 {
            return Err(damaged("a delta size is too large"));
        }
        v |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

fn read_u32(f: &File, at: u64) -> io::Result<u32> {
    let mut raw = [0u8; 4];
    f.read_exact_at(&mut raw, at)?;
    Ok(u32::from_be_bytes(raw))
}

/// Reads what is there, up to `buf.len()` bytes (a pack's last entry may be short).
fn read_at_most(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn check_len(got: u64, want: u64) -> io::Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(damaged(format!(
            "an object decodes to {got} bytes, its header says {want}"
        )))
    }
}
