//! Store write benchmark: health reports inserted by many concurrent tasks, and batches of
//! machine sightings (what a boot storm's DHCP/HTTP observations become), into SQLite and
//! PostgreSQL, with each write durable before it returns.
//!
//! ```text
//! eval "$(tests/postgres)"   # optional: adds the PostgreSQL rows
//! cargo run --release -p tugboot-store --example store_bench -- [--reports 10000] [--tasks 64]
//!     [--sightings 10000] [--batch 256] [--sqlite PATH] [--pg URL]
//! ```
//!
//! Prints a Markdown table: operations per second over the whole run and per-call latency
//! percentiles. SQLite runs in a temporary directory unless `--sqlite` names a file (put it on
//! the disk you care about: the numbers are dominated by fsync). PostgreSQL uses `--pg` or
//! `TUGBOOT_TEST_PG_URL`, in a fresh schema.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use sqlx::Connection as _;
use tugboot_fleet::facts::Observer;
use tugboot_fleet::observe::observed;
use tugboot_store::{Mac, MachineId, PgStore, Report, Sighting, Slot, SqliteStore, Store};

#[derive(Debug)]
struct Args {
    reports: u32,
    tasks: u32,
    sightings: u32,
    batch: u32,
    sqlite: Option<String>,
    pg: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        reports: 10_000,
        tasks: 64,
        sightings: 10_000,
        batch: 256,
        sqlite: None,
        pg: std::env::var("TUGBOOT_TEST_PG_URL").ok(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--reports" => args.reports = value()?.parse()?,
            "--tasks" => args.tasks = value()?.parse()?,
            "--sightings" => args.sightings = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--sqlite" => args.sqlite = Some(value()?),
            "--pg" => args.pg = Some(value()?),
            other => bail!("unknown argument {other} (see the file's doc comment)"),
        }
    }
    if args.tasks == 0 || args.reports < args.tasks || args.batch == 0 || args.batch > 4096 {
        bail!("need --tasks >= 1, --reports >= --tasks and --batch 1..=4096");
    }
    Ok(args)
}

struct Row {
    backend: &'static str,
    operation: String,
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn mac(n: u32) -> Mac {
    let [a, b, c, d] = n.to_be_bytes();
    Mac([0x02, 0x01, a, b, c, d])
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `total` calls of `op(task, i)` spread over `tasks` concurrent tasks, timing each.
async fn run_concurrent<S, F, Fut>(
    store: Arc<S>,
    tasks: u32,
    total: u32,
    op: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    S: Store + 'static,
    F: Fn(Arc<S>, u32, u32) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let per_task = total / tasks;
    let extra = total % tasks;
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, op) = (store.clone(), op.clone());
        let n = per_task + u32::from(t < extra);
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n as usize);
            for i in 0..n {
                let t0 = Instant::now();
                op(store.clone(), t, i).await?;
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await??);
    }
    Ok((started.elapsed(), latencies))
}

async fn bench<S: Store + 'static>(
    backend: &'static str,
    store: S,
    args: &Args,
) -> anyhow::Result<Vec<Row>> {
    let store = Arc::new(store);
    let mut devices = Vec::new();
    for t in 0..args.tasks {
        let sighting = Sighting {
            mac: mac(t),
            facts: observed(Observer::Dhcp, 1, &[]),
        };
        devices.push(store.observe(&[sighting], 1).await?[0]);
    }
    let devices: Arc<[MachineId]> = devices.into();
    let before = store.count_reports().await?;
    let devs = devices.clone();
    let (elapsed, latencies) = run_concurrent(store.clone(), args.tasks, args.reports, move |s, t, i| {
        let device = devs[t as usize];
        async move {
            let report = Report {
                device,
                report_id: format!("bench-{t}-{i}"),
                boot_id: "0b5e55ed-boot".into(),
                slot: Some(Slot::A),
                image_version: 42,
                checks: json!({"disk": "ok", "net": {"ok": true, "rtt_ms": 2}, "watchdog": "ok"}),
                uptime_secs: u64::from(i) * 30,
                last_error: None,
                outcome: None,
                received_at: 1_700_000_000 + i64::from(i),
            };
            s.insert_report(&report).await?;
            Ok(())
        }
    })
    .await?;
    let stored = store.count_reports().await? - before;
    if stored != u64::from(args.reports) {
        bail!(
            "{backend}: {stored} reports stored, expected {}",
            args.reports
        );
    }
    let mut rows = vec![Row {
        backend,
        operation: format!("insert_report ({} tasks)", args.tasks),
        ops: latencies.len(),
        elapsed,
        latencies,
    }];

    if args.sightings > 0 {
        // One writer, as the server's observation recorder is: batches of sightings with the
        // facts a PXE DHCP request yields, each batch one transaction.
        let batch = args.batch;
        let rounds = args.sightings.div_ceil(batch);
        let (elapsed, latencies) =
            run_concurrent(store.clone(), 1, rounds, move |s, _, i| async move {
                let list: Vec<Sighting> = (0..batch)
                    .map(|k| Sighting {
                        mac: mac(0x0100_0000 + i * batch + k),
                        facts: observed(
                            Observer::Dhcp,
                            100,
                            &[
                                ("arch", "x86_64"),
                                ("firmware", "uefi"),
                                ("netboot", "pxe"),
                                ("vendor_class", "PXEClient:Arch:00007:UNDI:003016"),
                            ],
                        ),
                    })
                    .collect();
                s.observe(&list, 100).await?;
                Ok(())
            })
            .await?;
        rows.push(Row {
            backend,
            operation: format!("observe ({batch} machines per batch, 4 facts each; ops = batches)"),
            ops: latencies.len(),
            elapsed,
            latencies,
        });
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut rows = Vec::new();

    let tmp = tempfile::tempdir()?;
    let sqlite_path = args
        .sqlite
        .clone()
        .map_or_else(|| tmp.path().join("bench.db"), Into::into);
    let sqlite = SqliteStore::open(&sqlite_path).await?;
    rows.extend(bench("SQLite (WAL, synchronous=FULL)", sqlite.clone(), &args).await?);
    sqlite.close().await;

    match &args.pg {
        Some(url) => {
            let schema = format!("bench_{}", std::process::id());
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .context("connect to PostgreSQL")?;
            sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut conn)
                .await?;
            let sep = if url.contains('?') { '&' } else { '?' };
            let pg = PgStore::connect(&format!("{url}{sep}options[search_path]={schema}")).await?;
            let result = bench("PostgreSQL 16 conns", pg.clone(), &args).await;
            pg.close().await;
            sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await?;
            rows.extend(result?);
        }
        None => eprintln!(
            "PostgreSQL skipped: pass --pg URL or set TUGBOOT_TEST_PG_URL (tests/postgres)"
        ),
    }

    println!("| backend | operation | ops | ops/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for mut row in rows {
        row.latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            row.backend,
            row.operation,
            row.ops,
            row.ops as f64 / row.elapsed.as_secs_f64(),
            ms(percentile(&row.latencies, 50)),
            ms(percentile(&row.latencies, 99)),
            ms(*row.latencies.last().unwrap_or(&Duration::ZERO)),
        );
    }
    Ok(())
}
