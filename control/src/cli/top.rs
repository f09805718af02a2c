//! `sluice top`: per-service and per-backend rates (packets/s, bits/s, new
//! flows/s) from the stats route, refreshed every second, busiest first.
//!
//! The rates are deltas of the stats route's counters over the time between
//! two samples ([`rates`], pure, unit-tested). A counter that went down
//! since the last sample was reset (its front end or backend was deleted
//! and added again, which starts it at zero, as IPVS does): its delta is
//! then its whole new value, as Prometheus' `rate()` treats resets. A front
//! end or backend new since the last sample is counted from zero.
//!
//! On a terminal the view is full screen (ratatui over crossterm: raw mode
//! and the alternate screen, restored on every way out); `q`, Esc or
//! Ctrl-C quits. With `--once`, or when stdout is not a terminal, it prints
//! one text frame of the rates over one interval and exits.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Row, Table};
use ratatui::{Frame, Terminal};
use serde_json::Value;

use super::{call, refused, table, CliError};

/// The counters of one front end or backend at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// New flows.
    pub conns: u64,
    /// Packets both ways.
    pub packets: u64,
    /// Bytes both ways.
    pub bytes: u64,
    /// Flows in the table now (a gauge, not a counter).
    pub active: u64,
}

impl Counts {
    fn of(v: &Value) -> Counts {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Counts {
            conns: n("conns"),
            packets: n("inPackets").saturating_add(n("outPackets")),
            bytes: n("inBytes").saturating_add(n("outBytes")),
            active: n("activeFlows"),
        }
    }
}

/// One front end's counters and its backends'.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontSample {
    /// Service port name (`ns/name:port`).
    pub name: String,
    /// `PROTO/ADDR:PORT`.
    pub frontend: String,
    /// Its counters.
    pub counts: Counts,
    /// Backends by `ADDR:PORT`, in the report's order.
    pub backends: Vec<(String, Counts)>,
}

/// Everything one stats answer says, keyed for matching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Front ends in the report's order.
    pub fronts: Vec<FrontSample>,
}

impl Sample {
    /// The sample a stats report (JSON) holds.
    pub fn of(report: &Value) -> Sample {
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("?").to_owned();
        let fronts = report["services"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| FrontSample {
                name: s(f, "name"),
                frontend: format!("{}/{}", s(f, "protocol"), addr_port(f)),
                counts: Counts::of(f),
                backends: f["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| (addr_port(b), Counts::of(b)))
                    .collect(),
            })
            .collect();
        Sample { fronts }
    }
}

fn addr_port(v: &Value) -> String {
    let a = v["address"].as_str().unwrap_or("?");
    let p = v["port"].as_u64().unwrap_or(0);
    if a.contains(':') {
        format!("[{a}]:{p}")
    } else {
        format!("{a}:{p}")
    }
}

/// Rates of one front end or backend.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    /// Packets per second, both ways.
    pub pps: f64,
    /// Bits per second, both ways (IP bytes × 8).
    pub bps: f64,
    /// New flows per second.
    pub flows: f64,
    /// Flows in the table now.
    pub active: u64,
}

/// A front end's rates and its backends', busiest first.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontRate {
    /// Service port name.
    pub name: String,
    /// `PROTO/ADDR:PORT`.
    pub frontend: String,
    /// Its rates.
    pub rate: Rate,
    /// Backends (`ADDR:PORT`) and their rates, busiest first.
    pub backends: Vec<(String, Rate)>,
}

/// The growth of a counter from `old` to `new`; a drop means a reset, after
/// which the counter counted `new` from zero.
pub fn delta(old: u64, new: u64) -> u64 {
    if new >= old {
        new - old
    } else {
        new
    }
}

/// The rates from `old` to `new` over `secs` seconds.
pub fn rate(old: Option<Counts>, new: Counts, secs: f64) -> Rate {
    let old = old.unwrap_or_default();
    let per_s = |d: u64| {
        if secs > 0.0 {
            d as f64 / secs
        } else {
            0.0
        }
    };
    Rate {
        pps: per_s(delta(old.packets, new.packets)),
        bps: per_s(delta(old.bytes, new.bytes)) * 8.0,
        flows: per_s(delta(old.conns, new.conns)),
        active: new.active,
    }
}

fn busiest(a: &Rate, b: &Rate) -> std::cmp::Ordering {
    b.pps
        .total_cmp(&a.pps)
        .then(b.bps.total_cmp(&a.bps))
        .then(b.flows.total_cmp(&a.flows))
        .then(b.active.cmp(&a.active))
}

/// Every front end's rates between two samples `secs` apart, sorted by
/// packet rate (then bit rate, new flows, active flows, name).
pub fn rates(old: &Sample, new: &Sample, secs: f64) -> Vec<FrontRate> {
    let before: HashMap<&str, &FrontSample> = old
        .fronts
        .iter()
        .map(|f| (f.frontend.as_str(), f))
        .collect();
    let mut out: Vec<FrontRate> = new
        .fronts
        .iter()
        .map(|f| {
            let prev = before.get(f.frontend.as_str()).filter(|p| p.name == f.name);
            let prev_b: HashMap<&str, Counts> = prev
                .into_iter()
                .flat_map(|p| p.backends.iter().map(|(k, c)| (k.as_str(), *c)))
                .collect();
            let mut backends: Vec<(String, Rate)> = f
                .backends
                .iter()
                .map(|(k, c)| (k.clone(), rate(prev_b.get(k.as_str()).copied(), *c, secs)))
                .collect();
            backends.sort_by(|a, b| busiest(&a.1, &b.1).then_with(|| a.0.cmp(&b.0)));
            FrontRate {
                name: f.name.clone(),
                frontend: f.frontend.clone(),
                rate: rate(prev.map(|p| p.counts), f.counts, secs),
                backends,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        busiest(&a.rate, &b.rate)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.frontend.cmp(&b.frontend))
    });
    out
}

/// `0`, `999`, `1.2k`, `34.5M`, `6.7G`: a rate in three or four digits.
pub fn si(x: f64) -> String {
    if x < 0.05 {
        return "0".into();
    }
    for (div, unit) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if x >= div {
            return format!("{:.1}{unit}", x / div);
        }
    }
    if x < 10.0 && x.fract() != 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// Column headers of the view.
pub const HEADER: [&str; 6] = [
    "SERVICE / BACKEND",
    "FRONTEND",
    "PPS",
    "BPS",
    "FLOWS/S",
    "ACTIVE",
];

/// One row per front end, then one per backend under it, indented: the
/// cells of the view, shared by the screen and the text frame.
pub fn cells(r: &[FrontRate]) -> Vec<(bool, [String; 6])> {
    let row = |a: String, b: String, x: &Rate| {
        [
            a,
            b,
            si(x.pps),
            si(x.bps),
            si(x.flows),
            x.active.to_string(),
        ]
    };
    let mut out = Vec::new();
    for f in r {
        out.push((true, row(f.name.clone(), f.frontend.clone(), &f.rate)));
        for (b, x) in &f.backends {
            out.push((false, row(format!("  {b}"), String::new(), x)));
        }
    }
    out
}

/// The title line: totals over every front end.
pub fn title(r: &[FrontRate], secs: f64) -> String {
    let pps: f64 = r.iter().map(|f| f.rate.pps).sum();
    let bps: f64 = r.iter().map(|f| f.rate.bps).sum();
    let flows: f64 = r.iter().map(|f| f.rate.flows).sum();
    format!(
        "sluice top: {} front ends, {} pkt/s, {}bit/s, {} new flows/s (every {secs}s; q quits)",
        r.len(),
        si(pps),
        si(bps),
        si(flows)
    )
}

/// One text frame, as `--once` prints it.
pub fn text_frame(r: &[FrontRate], secs: f64) -> String {
    let mut rows = vec![HEADER.map(str::to_owned).to_vec()];
    rows.extend(cells(r).into_iter().map(|(_, c)| c.to_vec()));
    format!("{}\n{}", title(r, secs), table::render(&rows))
}

/// Draws the view into `frame` (any backend: the terminal, or ratatui's
/// `TestBackend` in the tests).
pub fn draw(frame: &mut Frame<'_>, r: &[FrontRate], secs: f64, error: Option<&str>) {
    let [top, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(frame.area());
    let head = match error {
        Some(e) => format!("sluice top: {e}"),
        None => title(r, secs),
    };
    frame.render_widget(
        Line::styled(head, Style::new().add_modifier(Modifier::BOLD)),
        top,
    );
    let rows = cells(r).into_iter().map(|(front, c)| {
        let style = if front {
            Style::new().add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        Row::new(c.into_iter().enumerate().map(|(i, s)| {
            if i >= 2 {
                Cell::from(Line::from(s).right_aligned())
            } else {
                Cell::from(s)
            }
        }))
        .style(style)
    });
    let widths = [
        Constraint::Min(20),
        Constraint::Length(28),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let header = Row::new(HEADER.iter().enumerate().map(|(i, h)| {
        if i >= 2 {
            Cell::from(Line::from(*h).right_aligned())
        } else {
            Cell::from(*h)
        }
    }))
    .style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_widget(Table::new(rows, widths).header(header), body);
}

fn sample(socket: &Path) -> Result<Sample, CliError> {
    let (code, v) = call(
        socket,
        Method::GET,
        crate::api::STATS_PATH,
        "application/json",
        Vec::new(),
    )?;
    if code != StatusCode::OK {
        return Err(refused(&v, code));
    }
    Ok(Sample::of(&v))
}

/// `sluice top`.
///
/// # Errors
/// [`CliError`] when the API cannot be reached (at start; later failures
/// show in the view's title and it goes on), or the terminal fails.
pub fn top(socket: &Path, once: bool, interval: f64) -> Result<(), CliError> {
    let interval = Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
    let first = sample(socket)?;
    let at = Instant::now();
    if once || !std::io::stdout().is_terminal() {
        std::thread::sleep(interval);
        let next = sample(socket)?;
        let secs = at.elapsed().as_secs_f64();
        print!(
            "{}",
            text_frame(&rates(&first, &next, secs), interval.as_secs_f64())
        );
        return Ok(());
    }
    live(socket, first, at, interval).map_err(|e| CliError::Http(format!("terminal: {e}")))
}

/// Restores the terminal however the view ends (error, or a panic).
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        enable_raw_mode()?;
        let s = Screen;
        execute!(std::io::stdout(), EnterAlternateScreen)?;
        Ok(s)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen);
        let _ = disable_raw_mode();
    }
}

/// Whether the key quits (`q`, Esc, Ctrl-C: raw mode turns Ctrl-C into a
/// key, not a signal).
fn quits(e: &Event) -> bool {
    let Event::Key(k) = e else { return false };
    k.kind == KeyEventKind::Press
        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
            || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
}

fn live(socket: &Path, first: Sample, at: Instant, interval: Duration) -> std::io::Result<()> {
    let _screen = Screen::enter()?;
    let mut term = Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    term.clear()?;
    let (mut prev, mut prev_at) = (first, at);
    let mut shown: Vec<FrontRate> = rates(&prev, &prev, 1.0);
    let mut error: Option<String> = None;
    let secs = interval.as_secs_f64();
    let mut next_at = at + interval;
    loop {
        term.draw(|f| draw(f, &shown, secs, error.as_deref()))?;
        // Wait for a key until the next sample is due.
        let now = Instant::now();
        if now < next_at && event::poll(next_at - now)? {
            if quits(&event::read()?) {
                return Ok(());
            }
            // Another key, or a resize: redraw, keep waiting.
            continue;
        }
        next_at = Instant::now() + interval;
        match sample(socket) {
            Ok(s) => {
                let t = Instant::now();
                shown = rates(&prev, &s, t.duration_since(prev_at).as_secs_f64());
                (prev, prev_at, error) = (s, t, None);
            }
            Err(e) => error = Some(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn report(web: [u64; 5], b1: [u64; 5], api: [u64; 5]) -> Value {
        let fig = |f: [u64; 5]| {
            json!({"conns": f[0], "inPackets": f[1], "outPackets": f[2], "inBytes": f[3],
                   "outBytes": f[4], "activeFlows": 1})
        };
        let mut w = fig(web);
        w["name"] = json!("default/web:http");
        w["address"] = json!("198.18.100.10");
        w["port"] = json!(80);
        w["protocol"] = json!("TCP");
        let mut b = fig(b1);
        b["address"] = json!("198.18.1.11");
        b["port"] = json!(8080);
        w["backends"] = json!([b]);
        let mut a = fig(api);
        a["name"] = json!("default/api:dns");
        a["address"] = json!("2001:db8::10");
        a["port"] = json!(53);
        a["protocol"] = json!("UDP");
        a["backends"] = json!([]);
        json!({"services": [w, a]})
    }

    #[test]
    fn deltas_handle_growth_and_resets() {
        assert_eq!(delta(10, 25), 15);
        assert_eq!(delta(25, 25), 0);
        // Reset (the front end was deleted and added again): counted from 0.
        assert_eq!(delta(1000, 7), 7);
    }

    #[test]
    fn rates_per_second_both_ways_and_in_bits() {
        let old = Sample::of(&report(
            [1, 10, 10, 1000, 1000],
            [1, 10, 10, 1000, 1000],
            [0; 5],
        ));
        let new = Sample::of(&report(
            [5, 30, 30, 3000, 5000],
            [5, 30, 30, 3000, 5000],
            [0; 5],
        ));
        let r = rates(&old, &new, 2.0);
        assert_eq!(r[0].name, "default/web:http");
        assert_eq!(r[0].frontend, "TCP/198.18.100.10:80");
        assert_eq!(r[0].rate.pps, 20.0); // (20 + 20) / 2
        assert_eq!(r[0].rate.bps, 24000.0); // (2000 + 4000) * 8 / 2
        assert_eq!(r[0].rate.flows, 2.0);
        assert_eq!(r[0].rate.active, 1);
        assert_eq!(r[0].backends[0].0, "198.18.1.11:8080");
        assert_eq!(r[0].backends[0].1.pps, 20.0);
        assert_eq!(r[1].frontend, "UDP/[2001:db8::10]:53");
        assert_eq!(r[1].rate.pps, 0.0);
    }

    #[test]
    fn sorted_busiest_first_and_resets_are_not_negative() {
        let old = Sample::of(&report(
            [0, 100, 0, 0, 0],
            [0, 100, 0, 0, 0],
            [0, 5, 0, 0, 0],
        ));
        // web was recreated (counters back near zero); api got busy.
        let new = Sample::of(&report([0, 3, 0, 0, 0], [0, 3, 0, 0, 0], [0, 505, 0, 0, 0]));
        let r = rates(&old, &new, 1.0);
        assert_eq!(r[0].name, "default/api:dns");
        assert_eq!(r[0].rate.pps, 500.0);
        assert_eq!(r[1].rate.pps, 3.0);
        assert_eq!(r[1].backends[0].1.pps, 3.0);
    }

    #[test]
    fn a_front_end_new_since_the_last_sample_counts_from_zero() {
        let old = Sample::default();
        let new = Sample::of(&report([0, 4, 4, 0, 0], [0, 4, 4, 0, 0], [0; 5]));
        assert_eq!(rates(&old, &new, 1.0)[0].rate.pps, 8.0);
        // The same address now serving another service port is new, too.
        let mut other = old.clone();
        other.fronts = new.fronts.clone();
        other.fronts[0].name = "default/old:http".into();
        other.fronts[0].counts.packets = 2;
        assert_eq!(rates(&other, &new, 1.0)[0].rate.pps, 8.0);
    }

    #[test]
    fn si_units() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(0.5), "0.5");
        assert_eq!(si(7.0), "7");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.2k");
        assert_eq!(si(34_500_000.0), "34.5M");
        assert_eq!(si(6.7e9), "6.7G");
    }

    fn screen(r: &[FrontRate], w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, r, 1.0, None)).unwrap();
        let buf = t.backend().buffer();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    #[test]
    fn the_screen_shows_a_title_a_header_and_a_row_per_service_and_backend() {
        let old = Sample::of(&report([0; 5], [0; 5], [0; 5]));
        let new = Sample::of(&report(
            [3, 1000, 1000, 100_000, 150_000],
            [3, 1000, 1000, 100_000, 150_000],
            [0; 5],
        ));
        let r = rates(&old, &new, 1.0);
        let s = screen(&r, 100, 8);
        assert!(
            s[0].starts_with("sluice top: 2 front ends, 2.0k pkt/s, 2.0Mbit/s, 3 new flows/s"),
            "{s:#?}"
        );
        assert!(s[1].starts_with("SERVICE / BACKEND"), "{s:#?}");
        assert!(s[1].contains("FRONTEND") && s[1].trim_end().ends_with("ACTIVE"));
        assert!(s[2].starts_with("default/web:http"), "{s:#?}");
        assert!(s[2].contains("TCP/198.18.100.10:80"));
        // Rates right-aligned under their headers.
        let col_end = |line: &str, word: &str| line.find(word).unwrap() + word.len();
        assert_eq!(col_end(&s[1], "PPS"), col_end(&s[2], "2.0k"), "{s:#?}");
        assert_eq!(col_end(&s[1], "BPS"), col_end(&s[2], "2.0M"), "{s:#?}");
        assert!(s[3].starts_with("  198.18.1.11:8080"), "{s:#?}");
        assert!(s[4].starts_with("default/api:dns"), "{s:#?}");
        assert!(s[5].trim().is_empty());
    }

    #[test]
    fn the_text_frame_is_an_aligned_table() {
        let old = Sample::of(&report([0; 5], [0; 5], [0; 5]));
        let new = Sample::of(&report([2, 10, 10, 0, 0], [2, 10, 10, 0, 0], [0; 5]));
        let out = text_frame(&rates(&old, &new, 1.0), 1.0);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("sluice top: 2 front ends, 20 pkt/s"));
        assert!(
            lines[1].starts_with("SERVICE / BACKEND    FRONTEND"),
            "{out}"
        );
        assert_eq!(lines.len(), 5, "{out}");
        let pps = lines[1].find("PPS").unwrap();
        assert_eq!(&lines[2][pps..pps + 2], "20", "{out}");
    }
}
