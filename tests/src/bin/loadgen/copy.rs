//! `loadgen copy`: loads a binary COPY file in transactions of `batch` rows over one connection.

use std::io::Cursor;
use std::time::Instant;

use futures_util::SinkExt;

use crate::Error;
use crate::output::CopyOut;
use crate::stats::{round1, round3};

#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// PostgreSQL URL.
    #[arg(long)]
    pub database_url: String,
    /// A file written by `COPY … TO STDOUT (FORMAT binary)`.
    #[arg(long)]
    pub file: String,
    /// Rows a transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// The table to load.
    #[arg(long, default_value = "events")]
    pub table: String,
}

/// Splits a binary COPY file into its header and each tuple's bytes.
fn split_copy_file(data: &[u8]) -> Result<(&[u8], Vec<&[u8]>), Error> {
    const SIG: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let bad = || -> Error { "not a binary COPY file".into() };
    if data.len() < 19 || &data[..11] != SIG {
        return Err(bad());
    }
    let rd32 = |p: usize| -> Result<i32, Error> {
        data.get(p..p + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(bad)
    };
    let header_len = 19 + usize::try_from(rd32(15)?).map_err(|_| bad())?;
    let mut pos = header_len;
    let mut tuples = Vec::new();
    loop {
        let fields = data
            .get(pos..pos + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(bad)?;
        if fields == -1 {
            break;
        }
        let start = pos;
        pos += 2;
        for _ in 0..fields {
            let len = rd32(pos)?;
            pos += 4;
            if len > 0 {
                pos += len as usize;
            }
        }
        if pos > data.len() {
            return Err(bad());
        }
        tuples.push(&data[start..pos]);
    }
    Ok((&data[..header_len], tuples))
}

pub async fn copy(args: &CopyArgs) -> Result<CopyOut, Error> {
    let data = std::fs::read(&args.file).map_err(|e| format!("reading {}: {e}", args.file))?;
    let (batch, table) = (args.batch, &args.table);
    let (header, tuples) = split_copy_file(&data)?;
    let bodies: Vec<Vec<u8>> = tuples
        .chunks(batch.max(1))
        .map(|c| {
            let mut b = header.to_vec();
            for t in c {
                b.extend_from_slice(t);
            }
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b
        })
        .collect();
    let (mut client, conn) =
        tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let sql = format!("COPY {table} FROM STDIN (FORMAT binary)");
    let start = Instant::now();
    for body in bodies {
        let tx = client.transaction().await?;
        let sink = tx.copy_in::<_, Cursor<Vec<u8>>>(&sql).await?;
        futures_util::pin_mut!(sink);
        sink.send(Cursor::new(body)).await?;
        sink.finish().await?;
        tx.commit().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(CopyOut {
        rows: tuples.len() as u64,
        seconds: round3(secs),
        rows_per_sec: round1(tuples.len() as f64 / secs),
    })
}
