//! The orchestrator: for each contender, a fresh topology, the backend
//! servers, the contender, then the same bounded loads, measured the same
//! way.

use std::path::PathBuf;
use std::time::Duration;

use crate::contender::{Kind, Lb, LbOpts, HTTP_PORT, IPERF_PORT, IPERF_VIP, UDP_PORT};
use crate::report::{Row, Test};
use crate::serve::{udp_counters, UdpCounters};
use crate::sys::{check_stop, self_exe, sleep, Proc, Res};
use crate::topo::{ip_str, mac_str, Topo, TopoOpts, CLIENT_MAC, FRONT_MAC, VIP};

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunOpts {
    /// Contenders, in order.
    pub contenders: Vec<Kind>,
    /// Seconds of load per measurement.
    pub seconds: f64,
    /// Packet bound per UDP measurement.
    pub max_packets: u64,
    /// UDP flows of the main table (and of the services sweep).
    pub flows: usize,
    /// UDP flow counts of the flows sweep.
    pub flows_sweep: Vec<usize>,
    /// Service counts of the services sweep (1 = the main table).
    pub services_sweep: Vec<usize>,
    /// Concurrent connections of the connections/s client.
    pub concurrency: usize,
    /// UDP send rate (0: as fast as possible).
    pub rate: u64,
    /// CPU of the LB's data path.
    pub lb_cpu: usize,
    /// CPU of the load generators, clients, servers and sinks.
    pub load_cpu: usize,
    /// Bridge and backend stacks on the load CPU instead of the LB CPU
    /// (veth's default: the sender's CPU).
    pub downstream_on_load: bool,
    /// Offered rate of the LB-cost run (frames/s).
    pub cost_rate: u64,
    /// Runs of each UDP and conn/s measurement; the best one is kept.
    pub repeat: usize,
    /// Which tests: udp, conn, tcp.
    pub tests: Vec<String>,
    /// Namespace prefix.
    pub prefix: String,
    /// LB options.
    pub lb: LbOpts,
}

/// Results and what was observed about pinning.
pub struct Outcome {
    /// Every measurement.
    pub rows: Vec<Row>,
    /// Per contender: where its data path ran, notes, counters.
    pub pinning: Vec<(String, String)>,
    /// Per contender: its counters / notes.
    pub notes: Vec<(String, Vec<String>)>,
}

fn say(msg: &str) {
    eprintln!("sluice-bench: {msg}");
}

/// Runs every contender.
pub fn run(o: &RunOpts) -> Outcome {
    let mut out = Outcome {
        rows: Vec::new(),
        pinning: Vec::new(),
        notes: Vec::new(),
    };
    for &kind in &o.contenders {
        if check_stop().is_err() {
            break;
        }
        say(&format!("== {}", kind.name()));
        if let Err(e) = contender(kind, o, &mut out) {
            say(&format!("{}: {e}", kind.name()));
            // Mark whatever this contender did not measure as failed.
            for t in [Test::Udp, Test::Conn, Test::Tcp] {
                let has = out
                    .rows
                    .iter()
                    .any(|r| r.contender == kind.name() && r.test == t && r.services == 1);
                if !has && o.tests.iter().any(|x| x == t_name(t)) {
                    let mut r =
                        Row::new(kind.name(), t, if t == Test::Udp { o.flows } else { 0 }, 1);
                    r.note = e.clone();
                    out.rows.push(r);
                }
            }
            out.notes
                .push((kind.name().to_string(), vec![format!("FAILED: {e}")]));
        }
    }
    out
}

fn t_name(t: Test) -> &'static str {
    match t {
        Test::Udp | Test::UdpCost => "udp",
        Test::Conn => "conn",
        Test::Tcp => "tcp",
    }
}

/// A fresh topology, the backends' servers and a started contender. Dropping
/// it stops the processes and removes the namespaces.
struct Stage {
    lb: Lb,
    /// Seconds the contender took to apply its configuration.
    apply: f64,
    // Field order is drop order: the contender, the servers, the topology.
    _servers: Vec<Proc>,
    topo: Topo,
}

impl Stage {
    fn up(kind: Kind, services: usize, o: &RunOpts) -> Res<Stage> {
        let topo = Topo::up(&o.prefix, 3, &TopoOpts { lb_cpu: o.lb_cpu })?;
        let exe = self_exe()?;
        let mut servers = Vec::new();
        for i in 0..topo.backends {
            let args = vec![
                exe.clone(),
                "serve".into(),
                "--udp".into(),
                UDP_PORT.to_string(),
                "--tcp".into(),
                format!("{HTTP_PORT},{}", crate::contender::HTTP_TARGET),
                "--seconds".into(),
                o.lb.max_seconds.to_string(),
            ];
            let mut p = Proc::spawn(
                &format!("server b{}", i + 1),
                &topo.backend_ns(i),
                o.load_cpu,
                &args,
            )?;
            p.wait_stdout("ready", Duration::from_secs(10))?;
            servers.push(p);
        }
        let (lb, apply) = Lb::start(kind, &topo, services, &o.lb)?;
        topo.downstream_cpu(o.downstream_on_load.then_some(o.load_cpu))?;
        Ok(Stage {
            lb,
            apply,
            _servers: servers,
            topo,
        })
    }

    /// Stops the contender; returns notes on how it ended.
    fn finish(mut self, notes: &mut Vec<String>) {
        let alive = self.lb.alive();
        let counters = self.lb.stop();
        if !alive {
            notes.push("its process had exited before the end of the run".into());
        }
        if !counters.is_empty() {
            notes.push(format!("counters (non-zero): {}", counters.join(", ")));
        }
    }
}

fn contender(kind: Kind, o: &RunOpts, out: &mut Outcome) -> Res<()> {
    let mut st = Stage::up(kind, 1, o)?;
    say(&format!(
        "{} up in {:.2} s; data path: {}",
        kind.name(),
        st.apply,
        st.lb.pinning
    ));
    out.pinning
        .push((kind.name().to_string(), st.lb.pinning.clone()));
    let mut notes = st.lb.notes.clone();
    let result = measure_main(kind, o, &mut st, out);
    st.finish(&mut notes);
    out.notes.push((kind.name().to_string(), notes));
    result?;
    if kind.has_services() {
        // Each point in a fresh topology with a freshly started contender,
        // so no conntrack entry, flow or backend TIME_WAIT socket of an
        // earlier test is in the way; the apply time is the start time.
        for &s in o.services_sweep.iter().filter(|&&s| s > 1) {
            check_stop()?;
            let mut st = Stage::up(kind, s, o)?;
            say(&format!(
                "{}: {s} services applied in {:.2} s",
                kind.name(),
                st.apply
            ));
            let r = measure_services(o, &mut st, s, out);
            let mut notes = Vec::new();
            st.finish(&mut notes);
            if let Err(e) = r {
                say(&format!("{}: {s} services: {e}", kind.name()));
            }
        }
    }
    Ok(())
}

fn measure_main(kind: Kind, o: &RunOpts, st: &mut Stage, out: &mut Outcome) -> Res<()> {
    let name = kind.name();
    let want = |t: &str| o.tests.iter().any(|x| x == t);
    let downstream = o.downstream_on_load.then_some(o.load_cpu);
    let (topo, lb) = (&st.topo, &mut st.lb);
    if want("udp") && o.cost_rate > 0 {
        // The LB's own cost: a paced load the load CPU can carry, with the
        // bridge and the backends moved to the load CPU so that the LB CPU
        // does the LB's work only. Threaded NAPI pinned to the LB CPU, so
        // that an AF_XDP contender's receive work (XDP program, copy into
        // the ring) is counted too, as RPS brings the kernel contenders'
        // receive work there.
        check_stop()?;
        topo.downstream_cpu(Some(o.load_cpu))?;
        lb.set_threaded(true, o.lb_cpu)?;
        let r = best_of(o.repeat, true, || udp_cost(lb, o, topo));
        lb.set_threaded(o.lb.threaded_napi, o.lb_cpu)?;
        topo.downstream_cpu(downstream)?;
        report(&r);
        out.rows.push(r);
    }
    if want("udp") {
        let mut flows = o.flows_sweep.clone();
        flows.push(o.flows);
        flows.sort_unstable();
        flows.dedup();
        for f in flows {
            check_stop()?;
            let r = best_of(o.repeat, false, || udp(lb, o, topo, f, 1));
            report(&r);
            out.rows.push(r);
            if !lb.alive() {
                return Err(format!("{name} exited during the UDP test"));
            }
        }
    }
    if want("conn") {
        check_stop()?;
        let r = best_of(o.repeat, false, || conn(lb, o, topo, 1));
        report(&r);
        out.rows.push(r);
    }
    if want("tcp") {
        check_stop()?;
        let r = tcp(lb, o, topo);
        report(&r);
        out.rows.push(r);
    }
    if !lb.alive() {
        return Err(format!("{name} exited"));
    }
    Ok(())
}

fn measure_services(o: &RunOpts, st: &mut Stage, s: usize, out: &mut Outcome) -> Res<()> {
    let want = |t: &str| o.tests.iter().any(|x| x == t);
    let (topo, lb, apply) = (&st.topo, &st.lb, st.apply);
    if want("udp") {
        let mut r = best_of(o.repeat, false, || udp(lb, o, topo, o.flows, s));
        r.apply_s = Some(apply);
        report(&r);
        out.rows.push(r);
    }
    if want("conn") {
        check_stop()?;
        let mut r = best_of(o.repeat, false, || conn(lb, o, topo, s));
        r.apply_s = Some(apply);
        report(&r);
        out.rows.push(r);
    }
    Ok(())
}

/// Runs `f` `n` times (at least once) and keeps the best row: the highest
/// value, or the lowest with `lower_is_better`; a failed run never wins
/// over one with a value. On a shared machine, interference only makes a
/// run worse, so the best run is the least disturbed one.
fn best_of(n: usize, lower_is_better: bool, mut f: impl FnMut() -> Row) -> Row {
    let mut best = f();
    for _ in 1..n {
        if check_stop().is_err() {
            break;
        }
        let r = f();
        let better = match (r.value, best.value) {
            (Some(a), Some(b)) => (a < b) == lower_is_better && a != b,
            (Some(_), None) => true,
            _ => false,
        };
        if better {
            best = r;
        }
    }
    best
}

fn report(r: &Row) {
    let v = r
        .value
        .map_or_else(|| format!("failed: {}", r.note), |v| format!("{v:.3}"));
    say(&format!(
        "{} {:?} flows={} services={}: {v} (sent {} received {} loss {:.1}% errors {})",
        r.contender, r.test, r.flows, r.services, r.sent, r.received, r.loss_pct, r.errors
    ));
}

fn counters(topo: &Topo) -> Res<Vec<UdpCounters>> {
    (0..topo.backends)
        .map(|i| udp_counters(&topo.backend_ns(i)))
        .collect()
}

fn field(text: &str, key: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next().and_then(|v| v.parse().ok());
        }
    }
    None
}

/// CPU time of the LB's data path: softirq on the LB CPU plus the LB's own
/// threads (its process and NAPI threads), in USER_HZ ticks.
fn lb_ticks(lb: &Lb, o: &RunOpts) -> u64 {
    crate::sys::softirq_ticks(o.lb_cpu) + lb.own_ticks()
}

fn ticks_to_s(t: u64) -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    t as f64 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Runs `f` and stores the LB CPU time it took in `row`.
fn metered(lb: &Lb, o: &RunOpts, row: &mut Row, f: impl FnOnce(&mut Row) -> Res<()>) {
    let t0 = lb_ticks(lb, o);
    match f(row) {
        Ok(()) => row.lb_cpu_s = Some(ticks_to_s(lb_ticks(lb, o).saturating_sub(t0))),
        Err(e) => {
            row.value = None;
            row.note = e;
        }
    }
}

/// UDP: generator in the client, counters in the backends.
pub fn udp(lb: &Lb, o: &RunOpts, topo: &Topo, flows: usize, services: usize) -> Row {
    let mut row = Row::new(lb.kind.name(), Test::Udp, flows, services);
    metered(lb, o, &mut row, |row| udp_inner(o, topo, row, o.rate));
    row
}

/// The LB's CPU time per packet at `cost_rate` (value in microseconds).
pub fn udp_cost(lb: &Lb, o: &RunOpts, topo: &Topo) -> Row {
    let mut row = Row::new(lb.kind.name(), Test::UdpCost, o.flows, 1);
    // Keep the LB CPU's tick running (see sys::soak) while we sample it.
    let soak = self_exe().and_then(|exe| {
        Proc::spawn(
            "soak",
            &topo.ns("lb"),
            o.lb_cpu,
            &[
                exe,
                "soak".into(),
                "--seconds".into(),
                format!("{}", o.seconds + 30.0),
            ],
        )
    });
    if let Err(e) = soak {
        row.note = e;
        return row;
    }
    sleep(Duration::from_millis(100));
    metered(lb, o, &mut row, |row| udp_inner(o, topo, row, o.cost_rate));
    drop(soak);
    if let (Some(cpu), true) = (row.lb_cpu_s, row.received > 0) {
        row.value = Some(cpu * 1e6 / row.received as f64);
        row.note = format!(
            "{} pps offered, bridge and backends on CPU {}; {}",
            o.cost_rate, o.load_cpu, row.note
        );
    } else if row.value.is_some() {
        row.value = None;
        row.note = format!("nothing received; {}", row.note);
    }
    row
}

fn udp_inner(o: &RunOpts, topo: &Topo, row: &mut Row, rate: u64) -> Res<()> {
    let before = counters(topo)?;
    let args = vec![
        self_exe()?,
        "gen".into(),
        "--ifname".into(),
        "eth0".into(),
        "--src-mac".into(),
        mac_str(CLIENT_MAC),
        "--dst-mac".into(),
        mac_str(FRONT_MAC),
        "--src-ips".into(),
        "198.18.0.2,198.18.0.130".into(),
        "--flows".into(),
        row.flows.to_string(),
        "--services".into(),
        row.services.to_string(),
        "--dport".into(),
        UDP_PORT.to_string(),
        "--count".into(),
        o.max_packets.to_string(),
        "--seconds".into(),
        o.seconds.to_string(),
        "--rate".into(),
        rate.to_string(),
    ];
    let g = Proc::spawn("generator", &topo.ns("client"), o.load_cpu, &args)?;
    let text = g.finish(Duration::from_secs_f64(o.seconds + 15.0))?;
    let sent = field(&text, "sent").ok_or_else(|| format!("generator said {text:?}"))? as u64;
    let secs = field(&text, "secs").unwrap_or(o.seconds);
    // Let queues drain into the backends.
    sleep(Duration::from_millis(300));
    let after = counters(topo)?;
    let d: Vec<UdpCounters> = after.iter().zip(&before).map(|(a, b)| a.since(b)).collect();
    let received: u64 = d.iter().map(UdpCounters::received).sum();
    let csum: u64 = d.iter().map(|c| c.csum_errors).sum();
    let noport: u64 = d.iter().map(|c| c.no_ports).sum();
    row.sent = sent;
    row.received = received;
    row.secs = secs;
    row.errors = csum;
    row.loss_pct = if sent > 0 {
        100.0 * (sent.saturating_sub(received)) as f64 / sent as f64
    } else {
        0.0
    };
    row.value = Some(received as f64 / secs.max(1e-9) / 1e6);
    let per: Vec<String> = d.iter().map(|c| c.received().to_string()).collect();
    row.note = format!("per backend {}", per.join("/"));
    if csum > 0 {
        row.note.push_str(&format!("; {csum} bad UDP checksums"));
    }
    if noport > 0 {
        row.note.push_str(&format!("; {noport} to closed ports"));
    }
    if sent > 0 && received == 0 {
        row.note.push_str("; nothing arrived");
    }
    Ok(())
}

/// Connections/s from the client to VIP:80.
pub fn conn(lb: &Lb, o: &RunOpts, topo: &Topo, services: usize) -> Row {
    let mut row = Row::new(lb.kind.name(), Test::Conn, 0, services);
    metered(lb, o, &mut row, |row| {
        let args = vec![
            self_exe()?,
            "conn".into(),
            "--addr".into(),
            format!("{}:{HTTP_PORT}", ip_str(VIP)),
            "--concurrency".into(),
            o.concurrency.to_string(),
            "--seconds".into(),
            o.seconds.to_string(),
        ];
        let p = Proc::spawn("conn client", &topo.ns("client"), o.load_cpu, &args)?;
        let text = p.finish(Duration::from_secs_f64(o.seconds + 15.0))?;
        let ok = field(&text, "ok").ok_or_else(|| format!("conn client said {text:?}"))?;
        let errors =
            field(&text, "errors").unwrap_or(0.0) + field(&text, "timeouts").unwrap_or(0.0);
        let secs = field(&text, "secs").unwrap_or(o.seconds);
        row.received = ok as u64;
        row.errors = errors as u64;
        row.secs = secs;
        row.value = Some(ok / secs.max(1e-9));
        if ok == 0.0 {
            return Err(format!("no connection completed ({text})"));
        }
        row.note = text.trim().to_string();
        Ok(())
    });
    row
}

/// Bulk TCP: iperf3 through the iperf VIP to backend 1.
pub fn tcp(lb: &Lb, o: &RunOpts, topo: &Topo) -> Row {
    let mut row = Row::new(lb.kind.name(), Test::Tcp, 0, 1);
    metered(lb, o, &mut row, |row| {
        let port = IPERF_PORT.to_string();
        let srv_args: Vec<String> = ["iperf3", "-s", "-1", "-p", &port, "--forceflush"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut srv = Proc::spawn("iperf3 -s", &topo.backend_ns(0), o.load_cpu, &srv_args)?;
        srv.wait_stdout("listening", Duration::from_secs(5))?;
        let t = format!("{}", o.seconds.ceil().max(1.0) as u64);
        let cli_args: Vec<String> = [
            "iperf3",
            "-c",
            &ip_str(IPERF_VIP),
            "-p",
            &port,
            "-t",
            &t,
            "-J",
            "--connect-timeout",
            "3000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cli = Proc::spawn("iperf3 -c", &topo.ns("client"), o.load_cpu, &cli_args)?;
        let text = cli.finish(Duration::from_secs_f64(o.seconds + 20.0))?;
        let bps = iperf_bps(&text).ok_or("no sum_received in iperf3's JSON")?;
        row.value = Some(bps / 1e9);
        row.received = (bps / 8.0 * o.seconds.ceil()) as u64;
        row.secs = o.seconds.ceil();
        drop(srv);
        Ok(())
    });
    row
}

/// `end.sum_received.bits_per_second` from iperf3 -J.
fn iperf_bps(json: &str) -> Option<f64> {
    let at = json.find("\"sum_received\"")?;
    let rest = &json[at..];
    let k = rest.find("\"bits_per_second\"")?;
    let v = rest[k + "\"bits_per_second\"".len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = v
        .find(|c: char| {
            !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')
        })
        .unwrap_or(v.len());
    v[..end].parse().ok()
}

/// Where generated files go.
pub fn workdir(prefix: &str) -> Res<PathBuf> {
    let d = std::env::temp_dir().join(format!("sluice-bench-{prefix}"));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iperf_json() {
        let j = r#"{"end": {"sum_sent": {"bits_per_second": 5.0e9}, "sum_received": {"seconds": 2, "bits_per_second": 4123456789.5, "x": 1}}}"#;
        assert_eq!(iperf_bps(j), Some(4_123_456_789.5));
        assert_eq!(iperf_bps("{}"), None);
    }

    #[test]
    fn parses_fields() {
        assert_eq!(field("sent 100 secs 2.5", "secs"), Some(2.5));
        assert_eq!(field("ok 7 errors 0", "missing"), None);
    }
}
