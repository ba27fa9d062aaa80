//! Where the CPU of a timed window went, read from Linux's `/proc`: this
//! process, the local PostgreSQL server's processes, and the whole machine
//! (how many of its cores were busy, and how much time the hypervisor took
//! away). Each reading is `None` where `/proc` does not have it, so a row
//! leaves out what it cannot measure instead of reporting zero.

use std::time::Instant;

use serde_json::{json, Map, Value};

/// Linux reports these times in clock ticks of 1/100 s (`USER_HZ`).
const TICKS: f64 = 100.0;

/// The CPU counters at one moment.
pub(crate) struct Snapshot {
    at: Instant,
    own: f64,
    server: Option<f64>,
    machine: Option<Machine>,
}

/// The first (`cpu`) line of `/proc/stat`, in ticks summed over all cores.
#[derive(Clone, Copy)]
struct Machine {
    cores: usize,
    busy: u64,
    idle: u64,
    steal: u64,
}

impl Snapshot {
    /// The counters now; the local PostgreSQL server's only when the store
    /// is on one (`postgres`), so no other store's row reports them.
    pub(crate) fn now(postgres: bool) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            own: own_cpu(),
            server: postgres.then(server_cpu).flatten(),
            machine: machine(),
        }
    }

    /// Adds to `extra` what the window since this snapshot cost per
    /// reaction, under `own` for this process (`client_cpu_us_per_reaction`
    /// when the broker runs in it, `bench_cpu_us_per_reaction` when it only
    /// drives other processes), and how busy the machine's cores were.
    pub(crate) fn record(&self, extra: &mut Map<String, Value>, own: &str, reactions: u64) {
        let now = Snapshot::now(self.server.is_some());
        let secs = now.at.duration_since(self.at).as_secs_f64();
        if reactions > 0 {
            let per = |x: f64| x * 1e6 / reactions as f64;
            extra.insert(own.into(), json!(per(now.own - self.own)));
            if let Some((after, before)) = now.server.zip(self.server) {
                extra.insert(
                    "server_cpu_us_per_reaction".into(),
                    json!(per(after - before)),
                );
            }
        }
        if let Some((after, before)) = now.machine.zip(self.machine) {
            let busy = after.busy.saturating_sub(before.busy);
            let idle = after.idle.saturating_sub(before.idle);
            let steal = after.steal.saturating_sub(before.steal);
            let all = busy + idle + steal;
            if all > 0 && secs > 0.0 {
                extra.insert("cores".into(), json!(after.cores));
                // Average number of cores busy over the window, and that as
                // a share of all of them: 1.0 means the cores were the limit.
                extra.insert("cores_busy".into(), json!(busy as f64 / TICKS / secs));
                extra.insert("busy_share".into(), json!(busy as f64 / all as f64));
                extra.insert("steal_share".into(), json!(steal as f64 / all as f64));
            }
        }
    }
}

/// This process's CPU seconds (user and system), from `/proc/self/stat`.
pub(crate) fn own_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    times(rest, false) as f64 / TICKS
}

/// User and system ticks from the fields after a `stat` line's name (the
/// 14th and 15th fields of the line), with the reaped children's (16th and
/// 17th) when `children`.
fn times(rest: &str, children: bool) -> u64 {
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name start at the 3rd field of the line (state).
    let t = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let own = t(14) + t(15);
    if children {
        own + t(16) + t(17)
    } else {
        own
    }
}

/// CPU seconds of every PostgreSQL server process on this machine (with
/// the times of the backends that exited, which the postmaster collects),
/// or `None` where there is no `/proc` or no local server.
fn server_cpu() -> Option<f64> {
    let mut total = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.split_once(") ") else {
            continue;
        };
        if !name.ends_with("(postgres") {
            continue;
        }
        total += times(rest, true);
        found = true;
    }
    found.then(|| total as f64 / TICKS)
}

/// The machine's CPU ticks: busy (user, nice, system, irq, softirq), idle
/// (idle and iowait) and stolen by the hypervisor.
fn machine() -> Option<Machine> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_stat(stat: &str) -> Option<Machine> {
    let mut lines = stat.lines();
    let first = lines.next()?;
    let mut f = first.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let cores = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some(Machine {
        cores,
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        idle: at(3) + at(4),
        steal: at(7),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu() {
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0 && own_cpu() > 0.0);
    }

    #[test]
    fn the_machine_line_splits_busy_idle_and_stolen_time() {
        let stat = "cpu  100 5 20 1000 30 1 2 7 0 0\n\
                    cpu0 50 2 10 500 15 1 1 3 0 0\n\
                    cpu1 50 3 10 500 15 0 1 4 0 0\n\
                    intr 12345\n";
        let m = parse_stat(stat).unwrap();
        assert_eq!(m.cores, 2);
        assert_eq!(m.busy, 100 + 5 + 20 + 1 + 2);
        assert_eq!(m.idle, 1000 + 30);
        assert_eq!(m.steal, 7);
        assert!(parse_stat("intr 1\n").is_none());
    }

    #[test]
    fn a_window_records_how_busy_the_machine_was() {
        let before = Snapshot::now(false);
        // Spin until this process has used CPU the kernel has counted (a
        // tick is 10 ms), however busy the machine is.
        let give_up = Instant::now() + std::time::Duration::from_secs(120);
        let mut x = 0u64;
        while own_cpu() < before.own + 0.05 {
            assert!(
                Instant::now() < give_up,
                "the kernel counted no CPU for this process in 120 s"
            );
            for i in 0..100_000u64 {
                x = x.wrapping_add(i);
            }
        }
        let mut extra = Map::new();
        before.record(&mut extra, "client_cpu_us_per_reaction", 1000);
        assert!(x > 0);
        // 0.05 s over 1,000 reactions: 50 µs each, less a rounding of the
        // seconds' sum (the ticks are exact, their sum in f64 is not).
        let own = extra["client_cpu_us_per_reaction"].as_f64().unwrap();
        assert!(own >= 49.0, "{extra:?}");
        assert!(
            !extra.contains_key("server_cpu_us_per_reaction"),
            "no server asked for: {extra:?}"
        );
        if before.machine.is_some() {
            // This process was busy in the window, so some core was.
            assert!(extra["cores_busy"].as_f64().unwrap() > 0.0, "{extra:?}");
            let share = extra["busy_share"].as_f64().unwrap();
            assert!(share > 0.0 && share <= 1.0, "{extra:?}");
            assert!(extra["cores"].as_u64().unwrap() >= 1, "{extra:?}");
        }
    }
}
