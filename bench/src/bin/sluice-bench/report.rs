//! Results: the markdown tables, the CSV and the PNG plot.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::sys::Res;

/// What a row measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// UDP packet rate received by the backends.
    Udp,
    /// The LB's CPU time per UDP packet at a paced rate.
    UdpCost,
    /// TCP connections per second.
    Conn,
    /// Bulk TCP throughput (iperf3).
    Tcp,
}

impl Test {
    fn name(self) -> &'static str {
        match self {
            Test::Udp => "udp",
            Test::UdpCost => "udp_cost",
            Test::Conn => "conn",
            Test::Tcp => "tcp",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Row {
    /// Contender name.
    pub contender: String,
    /// What was measured.
    pub test: Test,
    /// UDP flows (0 for TCP tests).
    pub flows: usize,
    /// Services in the table.
    pub services: usize,
    /// Packets (UDP) the generator sent.
    pub sent: u64,
    /// Packets received by the backends (UDP) or connections completed.
    pub received: u64,
    /// Seconds of load.
    pub secs: f64,
    /// Mpps, connections/s or Gbit/s; `None` when the test failed.
    pub value: Option<f64>,
    /// Loss in percent (UDP).
    pub loss_pct: f64,
    /// Errors: bad checksums (UDP), failed or timed-out connections.
    pub errors: u64,
    /// Seconds it took to apply this service table (services sweep).
    pub apply_s: Option<f64>,
    /// CPU seconds the LB's data path used during the measurement (softirq
    /// on the LB CPU plus the LB's own threads).
    pub lb_cpu_s: Option<f64>,
    /// Failure or remark.
    pub note: String,
}

impl Row {
    /// LB CPU microseconds per packet / connection / megabyte.
    pub fn lb_us_per_unit(&self) -> Option<f64> {
        let cpu = self.lb_cpu_s?;
        self.value?;
        let units = match self.test {
            Test::Udp | Test::UdpCost | Test::Conn => self.received as f64,
            Test::Tcp => self.received as f64 / 1e6,
        };
        (units > 0.0).then(|| cpu * 1e6 / units)
    }

    /// An empty row for `contender`/`test`.
    pub fn new(contender: &str, test: Test, flows: usize, services: usize) -> Row {
        Row {
            contender: contender.to_string(),
            test,
            flows,
            services,
            sent: 0,
            received: 0,
            secs: 0.0,
            value: None,
            loss_pct: 0.0,
            errors: 0,
            apply_s: None,
            lb_cpu_s: None,
            note: String::new(),
        }
    }
}

fn find<'a>(
    rows: &'a [Row],
    c: &str,
    test: Test,
    flows: Option<usize>,
    services: usize,
) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.contender == c
            && r.test == test
            && r.services == services
            && flows.is_none_or(|f| r.flows == f)
    })
}

/// A value: `-` when not measured, `failed` when measured without a result.
fn fmt(v: Option<Option<f64>>, prec: usize) -> String {
    match v {
        None => "-".into(),
        Some(None) => "failed".into(),
        Some(Some(x)) => format!("{x:.prec$}"),
    }
}

fn ratio(s: Option<f64>, o: Option<f64>) -> String {
    match (s, o) {
        (Some(s), Some(o)) if o > 0.0 => format!("{:.2}", s / o),
        _ => "-".into(),
    }
}

/// The main table: one row per contender.
pub fn main_table(rows: &[Row], contenders: &[String], flows: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| contender | udp_mpps | udp_loss_% | lb_cpu_us_per_pkt | conn_per_s | tcp_gbps | sluice× udp | sluice× cpu/pkt | sluice× conn | sluice× tcp |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |c: &str, test: Test| {
        let f = matches!(test, Test::Udp | Test::UdpCost).then_some(flows);
        find(rows, c, test, f, 1).map(|r| r.value)
    };
    let val = |c: &str, test: Test| row(c, test).flatten();
    for c in contenders {
        let udp = find(rows, c, Test::Udp, Some(flows), 1);
        let loss = udp
            .filter(|r| r.value.is_some())
            .map_or("-".into(), |r| format!("{:.1}", r.loss_pct));
        let _ = writeln!(
            t,
            "| {c} | {} | {loss} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(row(c, Test::Udp), 3),
            fmt(row(c, Test::UdpCost), 2),
            fmt(row(c, Test::Conn), 0),
            fmt(row(c, Test::Tcp), 2),
            ratio(val("sluice", Test::Udp), val(c, Test::Udp)),
            // Cost: lower is better, so the contender's over Sluice's.
            ratio(val(c, Test::UdpCost), val("sluice", Test::UdpCost)),
            ratio(val("sluice", Test::Conn), val(c, Test::Conn)),
            ratio(val("sluice", Test::Tcp), val(c, Test::Tcp)),
        );
    }
    t
}

/// UDP Mpps (and loss) by number of flows.
pub fn flows_table(rows: &[Row], contenders: &[String], flows: &[usize]) -> String {
    let mut t = String::new();
    let _ = write!(t, "| contender |");
    for f in flows {
        let _ = write!(t, " {f} flows: Mpps (loss %) |");
    }
    let _ = write!(t, "\n|---|");
    for _ in flows {
        let _ = write!(t, "---:|");
    }
    t.push('\n');
    for c in contenders {
        let _ = write!(t, "| {c} |");
        for &f in flows {
            match find(rows, c, Test::Udp, Some(f), 1) {
                Some(r) if r.value.is_some() => {
                    let _ = write!(t, " {} ({:.1}) |", fmt(Some(r.value), 3), r.loss_pct);
                }
                Some(_) => t.push_str(" failed |"),
                None => t.push_str(" - |"),
            }
        }
        t.push('\n');
    }
    t
}

/// UDP Mpps, connections/s and apply time by number of services.
pub fn services_table(rows: &[Row], contenders: &[String], services: &[usize]) -> String {
    let mut t = String::new();
    let _ = write!(t, "| contender |");
    for s in services {
        let _ = write!(t, " {s} svc: Mpps / conn/s / apply s |");
    }
    let _ = write!(t, "\n|---|");
    for _ in services {
        let _ = write!(t, "---:|");
    }
    t.push('\n');
    for c in contenders {
        let _ = write!(t, "| {c} |");
        for &s in services {
            let u = rows
                .iter()
                .rev()
                .find(|r| r.contender == *c && r.test == Test::Udp && r.services == s);
            let k = find(rows, c, Test::Conn, None, s);
            if u.is_none() && k.is_none() {
                t.push_str(" - |");
                continue;
            }
            let apply = u
                .and_then(|r| r.apply_s)
                .map_or("-".into(), |a| format!("{a:.2}"));
            let _ = write!(
                t,
                " {} / {} / {apply} |",
                fmt(u.map(|r| r.value), 3),
                fmt(k.map(|r| r.value), 0)
            );
        }
        t.push('\n');
    }
    t
}

/// Every row as CSV.
pub fn write_csv(path: &Path, rows: &[Row]) -> Res<()> {
    let mut s = String::from(
        "contender,test,flows,services,sent,received,seconds,value,unit,loss_pct,errors,apply_s,lb_cpu_s,lb_cpu_us_per_unit,note\n",
    );
    for r in rows {
        let unit = match r.test {
            Test::Udp => "Mpps",
            Test::UdpCost => "us/pkt",
            Test::Conn => "conn/s",
            Test::Tcp => "Gbit/s",
        };
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.3},{},{unit},{:.3},{},{},{},{},\"{}\"",
            r.contender,
            r.test.name(),
            r.flows,
            r.services,
            r.sent,
            r.received,
            r.secs,
            r.value.map_or(String::new(), |v| format!("{v:.6}")),
            r.loss_pct,
            r.errors,
            r.apply_s.map_or(String::new(), |v| format!("{v:.3}")),
            r.lb_cpu_s.map_or(String::new(), |v| format!("{v:.3}")),
            r.lb_us_per_unit()
                .map_or(String::new(), |v| format!("{v:.3}")),
            r.note.replace('"', "'"),
        );
    }
    std::fs::write(path, s).map_err(|e| format!("writing {}: {e}", path.display()))
}

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Res<()> {
    for p in FONTS {
        if let Ok(bytes) = std::fs::read(p) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{p}: not a usable font"));
        }
    }
    Err(format!(
        "no TTF font for the plot's text (looked for {}); install fonts-dejavu-core",
        FONTS.join(", ")
    ))
}

const COLORS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x94, 0x67, 0xbd),
];

type Series = Vec<(String, Vec<(f64, f64)>)>;

/// The PNG: UDP Mpps against flows (left) and against services (right).
pub fn plot(path: &Path, rows: &[Row], contenders: &[String], flows_main: usize) -> Res<()> {
    register_font()?;
    let by_flows: Series = contenders
        .iter()
        .map(|c| {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.contender == c && r.test == Test::Udp && r.services == 1)
                .filter_map(|r| r.value.map(|v| (r.flows as f64, v)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (c.clone(), pts)
        })
        .collect();
    let by_services: Series = contenders
        .iter()
        .map(|c| {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.contender == c && r.test == Test::Udp && r.flows == flows_main)
                .filter_map(|r| r.value.map(|v| (r.services as f64, v)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts.dedup_by(|a, b| a.0 == b.0);
            (c.clone(), pts)
        })
        .filter(|(_, p)| p.len() > 1)
        .collect();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(700);
    chart(
        &left,
        "UDP 64 B through the LB vs flows (1 service)",
        "flows",
        &by_flows,
    )?;
    chart(
        &right,
        &format!("UDP 64 B vs services ({flows_main} flows)"),
        "services",
        &by_services,
    )?;
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn chart(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    xlabel: &str,
    series: &Series,
) -> Res<()> {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let xmax = pts.clone().map(|p| p.0).fold(1.0, f64::max) * 2.0;
    let ymax = pts.map(|p| p.1).fold(0.0, f64::max).max(0.01) * 1.2;
    let mut ch = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..xmax).log_scale(), 0f64..ymax)
        .map_err(|e| e.to_string())?;
    ch.configure_mesh()
        .x_desc(xlabel)
        .y_desc("Mpps received by backends")
        .x_label_formatter(&|x| {
            if *x >= 1000.0 {
                format!("{:.0}k", x / 1000.0)
            } else {
                format!("{x:.0}")
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, p)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        ch.draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        ch.draw_series(
            p.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
        )
        .map_err(|e| e.to_string())?;
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}
