//! `act events`: print the log, optionally following new commits.

use act::{Event, OpenMode, Query, StreamFilter};

use super::shutdown_signal;
use crate::cli::EventsArgs;
use crate::output::{json_line, line};
use crate::stores;
use crate::Error;
use crate::Globals;

const PAGE: usize = 1000;

fn print(cli: &Globals, e: &Event) -> Result<(), Error> {
    if cli.json {
        json_line(e)
    } else {
        line(format!(
            "{:>8}  {}  {}@{}  {}  {}",
            e.id,
            e.meta.created.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            e.stream,
            e.version,
            e.name,
            e.data
        ))
    }
}

pub async fn run(cli: &Globals, args: &EventsArgs) -> Result<(), Error> {
    let stop = shutdown_signal()?;
    let store = stores::open_mode(&cli.store, OpenMode::ReadOnly).await?;
    let mut wake = store.wake();
    let filter = args.stream.as_ref().map(|s| {
        if s.contains(['*', '?']) {
            StreamFilter::Pattern(s.clone())
        } else {
            StreamFilter::Exact(s.clone())
        }
    });
    let mut after = args.after;
    let mut left = args.limit.unwrap_or(usize::MAX);
    // The backlog, in pages.
    while left > 0 {
        let q = Query {
            stream: filter.clone(),
            after: Some(after),
            limit: Some(PAGE.min(left)),
            ..Default::default()
        };
        let page = store.query(&q).await?;
        for e in &page {
            print(cli, e)?;
            after = e.id;
        }
        left -= page.len();
        if page.len() < PAGE.min(left + page.len()) {
            break;
        }
    }
    if !args.follow {
        return Ok(());
    }
    // New commits, woken by the store (and a poll, in case a wake-up is missed).
    tokio::pin!(stop);
    loop {
        wake.borrow_and_update();
        let q = Query {
            stream: filter.clone(),
            after: Some(after),
            limit: Some(PAGE),
            ..Default::default()
        };
        for e in store.query(&q).await? {
            print(cli, &e)?;
            after = e.id;
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = wake.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}
