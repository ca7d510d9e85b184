//! The record files of the partitioned example, read as they grow: each
//! line is `MEMBER PARTITION KEY STREAM_SEQ START_UNIX_NS END_UNIX_NS`,
//! one per message processed, written before its ack.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::BoxError;

/// One processed message: who processed it, of which partition, when it
/// started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) member: String,
    pub(super) partition: u32,
    pub(super) start_unix_ns: u128,
}

/// A record file, read from where the last read stopped.
pub(super) struct RecordTail {
    path: PathBuf,
    offset: u64,
    /// The start of a line whose end was not written yet.
    partial: String,
}

impl RecordTail {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The records appended since the last read (none while the file does
    /// not exist yet).
    pub(super) fn read_new(&mut self) -> Result<Vec<Record>, BoxError> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(format!("{}: {err}", self.path.display()).into()),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = std::mem::take(&mut self.partial);
        let read = file.read_to_string(&mut text)?;
        self.offset += read as u64;
        let complete = match text.rfind('\n') {
            Some(end) => {
                self.partial = text[end + 1..].to_string();
                &text[..end]
            }
            None => {
                self.partial = text;
                return Ok(Vec::new());
            }
        };
        complete
            .lines()
            .filter_map(|line| parse(line).transpose())
            .collect::<Result<_, String>>()
            .map_err(|err| format!("{}: {err}", self.path.display()).into())
    }
}

/// Parses one line; `None` for a message without a partition (`-`).
fn parse(line: &str) -> Result<Option<Record>, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [member, partition, _key, _seq, start, _end] = fields[..] else {
        return Err(format!("a record line without 6 fields: {line:?}"));
    };
    if partition == "-" {
        return Ok(None);
    }
    let number = |what: &str, value: &str| {
        value
            .parse::<u128>()
            .map_err(|_| format!("{what} {value:?} is not a number in {line:?}"))
    };
    Ok(Some(Record {
        member: member.to_string(),
        partition: u32::try_from(number("the partition", partition)?)
            .map_err(|_| format!("partition {partition} is too large in {line:?}"))?,
        start_unix_ns: number("the start", start)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_parsed_and_a_partial_one_waits_for_its_end() {
        let path = std::env::temp_dir().join(format!("bench-record-{}.rec", std::process::id()));
        std::fs::write(&path, "m1 3 k7 42 100 200\nm2 - - 43 300").expect("write");
        let mut tail = RecordTail::new(path.clone());
        let first = tail.read_new().expect("read");
        assert_eq!(
            first,
            vec![Record {
                member: "m1".into(),
                partition: 3,
                start_unix_ns: 100
            }]
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut file, b" 400\nm3 5 k1 44 500 600\n").expect("append");
        let next = tail.read_new().expect("read");
        assert_eq!(next.len(), 1, "the line without a partition is skipped");
        assert_eq!((next[0].partition, next[0].start_unix_ns), (5, 500));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_malformed_line_is_named() {
        let err = parse("m1 x k1 1 2 3").expect_err("a bad partition");
        assert!(err.contains("\"x\""), "{err}");
        assert!(parse("m1 1 k1").is_err());
    }
}
