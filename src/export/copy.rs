//! `COPY`'s CSV, streamed to the writer: its bytes pass through as they come, but for
//! the cells whose text the export writes otherwise ([`super::cell`]), rewritten in
//! place; the totals are added up and the bytes hashed on the way.

use super::cell::{text_cell, text_is_rewritten, time_cell, unquote};
use super::sql::{Cell, cells};
use super::totals::{TotalColumns, Totals};
use super::{ExportError, Level};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::ops::Range;

/// Bytes gathered before they are hashed and written.
const WRITE_SIZE: usize = 1 << 18;

/// Writes the header, then every row `COPY` streams, to `out`; answers the totals and
/// the SHA-256 of what was written.
pub(super) async fn rewrite<W: Write>(
    mut copy: impl Stream<Item = Result<Bytes, sqlx::Error>> + Unpin,
    level: Level,
    out: W,
) -> Result<(Totals, String), ExportError> {
    let mut rows = Rows::new(level, out);
    // Each message is one row as PostgreSQL sends them; any split is carried over.
    let mut carried = Vec::new();
    while let Some(chunk) = copy.try_next().await? {
        if carried.is_empty() {
            let used = rows.write(&chunk)?;
            carried.extend_from_slice(&chunk[used..]);
        } else {
            carried.extend_from_slice(&chunk);
            let used = rows.write(&carried)?;
            carried.drain(..used);
        }
    }
    if !carried.is_empty() {
        return Err(ExportError::Row(String::from_utf8_lossy(&carried).into()));
    }
    rows.finish()
}

/// The rows written so far: their totals, and the bytes not yet written.
struct Rows<W> {
    columns: &'static [&'static str],
    cells: &'static [Cell],
    total_columns: TotalColumns,
    totals: Totals,
    /// The current row's cells, as ranges of its bytes.
    fields: Vec<Range<usize>>,
    buffer: Vec<u8>,
    hash: Sha256,
    out: W,
}

impl<W: Write> Rows<W> {
    fn new(level: Level, out: W) -> Self {
        let columns = level.columns();
        let mut buffer = Vec::with_capacity(WRITE_SIZE + 4096);
        buffer.extend_from_slice(columns.join(",").as_bytes());
        buffer.push(b'\n');
        Self {
            columns,
            cells: cells(level),
            total_columns: TotalColumns::of(level),
            totals: Totals::default(),
            fields: Vec::with_capacity(columns.len()),
            buffer,
            hash: Sha256::new(),
            out,
        }
    }

    /// Writes the whole rows at the start of `input`; answers how many bytes they took.
    fn write(&mut self, input: &[u8]) -> Result<usize, ExportError> {
        let mut used = 0;
        while let Some(end) = split_row(&input[used..], &mut self.fields) {
            self.row(&input[used..used + end])?;
            used += end;
        }
        Ok(used)
    }

    /// One row, its cells in `self.fields`.
    fn row(&mut self, row: &[u8]) -> Result<(), ExportError> {
        let unreadable = || ExportError::Row(String::from_utf8_lossy(row).into());
        if self.fields.len() != self.cells.len() {
            return Err(unreadable());
        }
        let cell = |i: usize| &row[self.fields[i].clone()];
        let text = |i: usize| std::str::from_utf8(cell(i)).map_err(|_| unreadable());
        let t = &self.total_columns;
        self.totals.add(
            text(t.amount)?,
            text(t.settle_amount)?,
            &unquote(text(t.settle_currency)?),
            text(t.units)?,
        )?;
        // The row's bytes as they are, but for the cells rewritten: the runs between
        // those are copied whole, commas and the newline with them.
        let mut copied = 0;
        for (i, (range, kind)) in self.fields.iter().zip(self.cells).enumerate() {
            let raw = &row[range.clone()];
            let rewritten = match kind {
                Cell::Plain => false,
                Cell::Text => text_is_rewritten(raw),
                Cell::Time => !raw.is_empty(),
            };
            if !rewritten {
                continue;
            }
            self.buffer.extend_from_slice(&row[copied..range.start]);
            copied = range.end;
            if *kind == Cell::Text {
                text_cell(raw, &mut self.buffer);
            } else {
                time_cell(raw, &mut self.buffer).ok_or_else(|| ExportError::Value {
                    column: self.columns[i],
                    value: String::from_utf8_lossy(raw).into(),
                })?;
            }
        }
        self.buffer.extend_from_slice(&row[copied..]);
        if self.buffer.len() >= WRITE_SIZE {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ExportError> {
        self.hash.update(&self.buffer);
        self.out
            .write_all(&self.buffer)
            .map_err(ExportError::Write)?;
        self.buffer.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(Totals, String), ExportError> {
        self.flush()?;
        self.out.flush().map_err(ExportError::Write)?;
        Ok((self.totals, hex::encode(self.hash.finalize())))
    }
}

/// The cells of the CSV row at the start of `input` into `fields` (without the comma
/// or the newline); answers where the row ends, after its newline; none if it does not.
fn split_row(input: &[u8], fields: &mut Vec<Range<usize>>) -> Option<usize> {
    fields.clear();
    let mut start = 0;
    let mut at = 0;
    // Eight bytes at a time while they hold no quote and no newline, only commas to find
    // (most rows, but for their end).
    while let Some(chunk) = input.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if bytes_equal(word, b'"') | bytes_equal(word, b'\n') != 0 {
            break;
        }
        let mut commas = bytes_equal(word, b',');
        while commas != 0 {
            let i = at + (commas.trailing_zeros() / 8) as usize;
            fields.push(start..i);
            start = i + 1;
            commas &= commas - 1;
        }
        at += 8;
    }
    // Then byte by byte, no quote seen yet.
    let mut quoted = false;
    for (i, &b) in input.iter().enumerate().skip(at) {
        match b {
            // A doubled quote inside quotes leaves and re-enters them.
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                fields.push(start..i);
                start = i + 1;
            }
            b'\n' if !quoted => {
                fields.push(start..i);
                return Some(i + 1);
            }
            _ => {}
        }
    }
    None
}

/// The high bit of each byte of `word` that is `byte`, and no other bit.
fn bytes_equal(word: u64, byte: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = word ^ (0x0101_0101_0101_0101 * u64::from(byte));
    // A byte's low seven bits plus 0x7f reach its high bit unless they are all zero,
    // without carrying into the next byte.
    !(((x & LOW7) + LOW7) | x | LOW7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_on_commas_and_newlines_outside_quotes() {
        let mut fields = Vec::new();
        let input = b"a,\"b,\"\"c\"\"\n\",,d\nnext";
        let end = split_row(input, &mut fields).unwrap();
        assert_eq!(&input[end..], b"next");
        let cells: Vec<&[u8]> = fields.iter().map(|r| &input[r.clone()]).collect();
        assert_eq!(
            cells,
            [&b"a"[..], b"\"b,\"\"c\"\"\n\"", b"", b"d"],
            "{:?}",
            fields
        );
        assert_eq!(split_row(b"no,newline", &mut fields), None);
    }

    /// `split_row` as the plain byte loop it speeds up.
    fn split_slowly(input: &[u8]) -> Option<(Vec<Range<usize>>, usize)> {
        let (mut fields, mut start, mut quoted) = (Vec::new(), 0, false);
        for (i, &b) in input.iter().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    fields.push(start..i);
                    start = i + 1;
                }
                b'\n' if !quoted => {
                    fields.push(start..i);
                    return Some((fields, i + 1));
                }
                _ => {}
            }
        }
        None
    }

    proptest::proptest! {
        #[test]
        fn rows_split_eight_bytes_at_a_time_as_one_by_one(
            input in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b',', b'"', b'\n', 0x80, 0xff, b'+']),
                0..80,
            )
        ) {
            let mut fields = Vec::new();
            let fast = split_row(&input, &mut fields).map(|end| (fields.clone(), end));
            proptest::prop_assert_eq!(fast, split_slowly(&input));
        }
    }

    #[test]
    fn bytes_equal_marks_exactly_the_bytes() {
        let word = u64::from_le_bytes(*b",a,\x80,\xff\x01,");
        assert_eq!(bytes_equal(word, b','), 0x8000_0080_0080_0080);
        assert_eq!(bytes_equal(word, 0x80), 0x0000_0000_8000_0000);
        assert_eq!(bytes_equal(word, b'"'), 0);
    }

    #[tokio::test]
    async fn rows_split_across_messages_are_written_whole() {
        let rows = "\"=1+2\",app,,2026-11-01 00:00:00.5+00,sms,1,0,460,1,,,2,0.5,,1.25,\"E\nUR\",,,,settled\n";
        let messages: Vec<Result<Bytes, sqlx::Error>> = rows
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .chain([Ok(Bytes::from_static(rows.as_bytes()))])
            .collect();
        let mut out = Vec::new();
        let (totals, sha) = rewrite(futures::stream::iter(messages), Level::Attempt, &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let row = "\"'=1+2\",app,,2026-11-01T00:00:00.500Z,sms,1,0,460,1,,,2,0.5,,1.25,\"E\nUR\",,,,settled\n";
        assert_eq!(
            text,
            format!("{}\n{row}{row}", Level::Attempt.columns().join(","))
        );
        assert_eq!(sha, hex::encode(Sha256::digest(&out)));
        assert_eq!(totals.rows, 2);
        assert_eq!(totals.settle_amount["E\nUR"].to_string(), "2.50");

        let cut = Ok(Bytes::from_static(b"half,a row"));
        let error = rewrite(futures::stream::iter([cut]), Level::Attempt, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(error, ExportError::Row(_)), "{error}");
    }
}
