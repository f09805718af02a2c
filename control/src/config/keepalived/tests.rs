//! Unit tests of the keepalived.conf reader: every keyword Sluice maps,
//! keepalived's defaults, every refusal with its line, includes, the
//! detection, and a property that no input panics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::config::{load_file, CompileCtx};

const EXAMPLE: &str = include_str!("../../../../examples/keepalived.conf");

fn parse_str(text: &str) -> Result<Parsed, KeepalivedError> {
    parse(Path::new("k.conf"), text)
}

fn spec(text: &str) -> Value {
    let p = parse_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(p.objects.len(), 1, "{text}");
    p.objects[0].1["spec"].clone()
}

fn err(text: &str) -> String {
    match parse_str(text) {
        Ok(p) => panic!("accepted: {text}\n{:?}", p.objects),
        Err(e) => e.to_string(),
    }
}

/// A unique scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!(
            "sluice-keepalived-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_example_maps_every_keyword() {
    let p = parse(Path::new("examples/keepalived.conf"), EXAMPLE).unwrap();
    assert_eq!(p.objects.len(), 2);
    let (loc, web) = &p.objects[0];
    assert_eq!(loc.line, 32);
    assert_eq!(web["metadata"]["name"], "tcp-198-18-100-10-80");
    assert_eq!(web["metadata"]["namespace"], "ipvs");
    assert_eq!(
        web["metadata"]["annotations"][SOURCE_ANNOTATION],
        "examples/keepalived.conf:32"
    );
    let s = &web["spec"];
    assert_eq!(s["protocol"], "TCP");
    assert_eq!(s["address"], "198.18.100.10");
    assert_eq!(s["port"], 80);
    assert_eq!(s["scheduler"], "rr");
    assert_eq!(s["realServers"].as_array().unwrap().len(), 3);
    assert_eq!(
        s["realServers"][0],
        json!({"address": "198.18.1.11", "port": 8080, "method": "masq", "weight": 1})
    );
    assert_eq!(
        s["healthCheck"],
        json!({"type": "tcp", "interval": "2s", "timeout": "1s", "rise": 1, "fall": 2})
    );
    assert_eq!(s["healthCheckAction"], "remove");

    let api = &p.objects[1].1["spec"];
    assert_eq!(api["scheduler"], "wlc");
    assert_eq!(
        api["persistence"],
        json!({"timeout": 300, "netmask": "255.255.255.0"})
    );
    assert_eq!(api["realServers"][0]["method"], "route");
    assert_eq!(api["realServers"][0]["weight"], 3);
    assert_eq!(
        api["healthCheck"],
        json!({"type": "http", "path": "/healthz", "status": 200, "interval": "5s",
               "timeout": "2s", "rise": 1, "fall": 3})
    );
    assert_eq!(api["healthCheckAction"], "weight0");

    let notices = p.notices.join("\n");
    assert!(
        notices.contains("examples/keepalived.conf:9: global_defs ignored"),
        "{notices}"
    );
    assert!(
        notices.contains(":17: vrrp_instance VI_1 ignored: VRRP"),
        "{notices}"
    );
    assert!(
        notices.contains("delay_before_retry 1 ignored"),
        "{notices}"
    );
}

#[test]
fn the_example_loads_as_a_config_with_its_checks() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/keepalived.conf"
    ));
    let cfg = load_file(path).unwrap();
    assert_eq!(cfg.services.len(), 2);
    let web = &cfg.services[0];
    assert_eq!(web.name, "VirtualService ipvs/tcp-198-18-100-10-80");
    assert_eq!(web.forward, sluice_dataplane::service::ForwardMethod::Nat);
    let api = &cfg.services[1];
    assert_eq!(api.forward, sluice_dataplane::service::ForwardMethod::Dr);
    assert_eq!(
        (api.affinity_timeout, api.affinity_prefix),
        (Some(300), Some(24))
    );
    assert_eq!(
        api.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [3, 1]
    );
    let c = &cfg.checks[&web.name];
    assert_eq!(c.action, CheckAction::Remove);
    assert_eq!(
        (c.spec.interval, c.spec.fall, c.spec.rise),
        (Duration::from_secs(2), 2, 1)
    );
    assert_eq!(cfg.checks[&api.name].action, CheckAction::Weight0);
}

#[test]
fn keepalived_defaults_are_honoured() {
    let s = spec(
        "virtual_server 198.18.0.1 80 {\n real_server 198.18.1.1 80 {\n TCP_CHECK {\n }\n }\n}\n",
    );
    // No lb_algo: ipvsadm's default (wlc) applies in the object.
    assert!(s.get("scheduler").is_none());
    assert!(s.get("persistence").is_none());
    assert_eq!(s["protocol"], "TCP");
    assert_eq!(
        s["realServers"][0],
        json!({"address": "198.18.1.1", "port": 80, "method": "masq", "weight": 1})
    );
    assert_eq!(
        s["healthCheck"],
        json!({"type": "tcp", "interval": "1m", "timeout": "5s", "rise": 1, "fall": 2})
    );
    assert_eq!(s["healthCheckAction"], "remove");
    // HTTP_GET expects 200 without status_code; no checker: no check.
    let s = spec("virtual_server 198.18.0.1 80 { real_server 198.18.1.1 80 { HTTP_GET { url { path / } } } }");
    assert_eq!(s["healthCheck"]["status"], 200);
    let s = spec("virtual_server 198.18.0.1 80 { real_server 198.18.1.1 80 { weight 2 } }");
    assert!(s.get("healthCheck").is_none());
    // persistence_timeout without a value: IPVS's 360 s.
    let s = spec("virtual_server 198.18.0.1 80 {\npersistence_timeout\n}");
    assert_eq!(s["persistence"]["timeout"], 360);
}

#[test]
fn every_mapped_keyword() {
    let s = spec(
        r#"virtual_server 2001:db8::10 443 {
    lvs_sched mh
    mh-port
    mh-fallback
    lvs_method TUN
    protocol udp
    persistence_timeout 60
    persistence_granularity 64
    delay_loop 0.5
    inhibit_on_failure
    quorum 1
    real_server 2001:db8:1::11 4443 {
        weight 7
        uthreshold 100
        lthreshold 50
        delay_loop 3
        TCP_CHECK {
            connect_port 9000
            connect_timeout 0.25
            nb_get_retry 4
        }
    }
    real_server 2001:db8:1::12 {
        weight 0
        TCP_CHECK {
            connect_port 9000
            connect_timeout 0.25
            nb_get_retry 4
            delay_loop 3
        }
    }
}"#,
    );
    assert_eq!(s["scheduler"], "mh");
    assert_eq!(s["schedulerFlags"], json!(["mh-port", "mh-fallback"]));
    assert_eq!(s["protocol"], "UDP");
    assert_eq!(s["persistence"], json!({"timeout": 60, "netmask": "64"}));
    assert_eq!(
        s["realServers"][0],
        json!({"address": "2001:db8:1::11", "port": 4443, "method": "tunnel", "weight": 7,
               "upperThreshold": 100, "lowerThreshold": 50})
    );
    assert_eq!(s["realServers"][1]["port"], 443);
    assert_eq!(s["realServers"][1]["weight"], 0);
    assert_eq!(
        s["healthCheck"],
        json!({"type": "tcp", "port": 9000, "interval": "3s", "timeout": "250ms", "rise": 1, "fall": 5})
    );
    assert_eq!(s["healthCheckAction"], "weight0");
    // lb_kind on a real server wins over the virtual_server's.
    let s = spec("virtual_server 198.18.0.1 80 {\nlb_kind DR\nreal_server 198.18.1.1 80 {\nlb_kind NAT\n}\n}");
    assert_eq!(s["realServers"][0]["method"], "masq");
    // inhibit_on_failure off on the server beats on at the service.
    let s = spec("virtual_server 198.18.0.1 80 {\ninhibit_on_failure on\nreal_server 198.18.1.1 80 {\ninhibit_on_failure off\nTCP_CHECK {\n}\n}\n}");
    assert_eq!(s["healthCheckAction"], "remove");
}

#[test]
fn a_long_connect_timeout_is_cut_to_the_interval_with_a_notice() {
    let p = parse_str("virtual_server 198.18.0.1 80 {\ndelay_loop 3\nreal_server 198.18.1.1 80 {\nTCP_CHECK {\n}\n}\n}").unwrap();
    assert_eq!(p.objects[0].1["spec"]["healthCheck"]["timeout"], "3s");
    assert!(
        p.notices
            .iter()
            .any(|n| n
                .starts_with("k.conf:4: TCP_CHECK: connect_timeout 5s cut to the delay_loop 3s")),
        "{:?}",
        p.notices
    );
}

#[test]
fn ignored_keywords_give_one_notice_each() {
    let p = parse_str(
        "global_defs {\n router_id a\n}\nvrrp_script chk {\n script \"/bin/true\"\n}\nvrrp_sync_group G {\n group {\n VI_1\n }\n}\nstatic_routes {\n 198.18.5.0/24 via 198.18.1.1\n}\nvirtual_server 198.18.0.1 80 {\n ha_suspend\n real_server 198.18.1.1 80 {\n notify_up /bin/up\n notify_down \"/bin/down x\"\n }\n}\n",
    )
    .unwrap();
    assert_eq!(p.objects.len(), 1);
    let lines: Vec<&str> = p
        .notices
        .iter()
        .map(|n| n.split(" ignored").next().unwrap_or(""))
        .collect();
    assert_eq!(
        lines,
        [
            "k.conf:1: global_defs",
            "k.conf:4: vrrp_script chk",
            "k.conf:7: vrrp_sync_group G",
            "k.conf:12: static_routes",
            "k.conf:16: ha_suspend",
            "k.conf:18: notify_up /bin/up",
            "k.conf:19: notify_down /bin/down x",
        ]
    );
}

#[test]
fn comments_quotes_and_braces_are_keepalived_s() {
    let s = spec("# a comment\n! another\nvirtual_server 198.18.0.1 80 # trailing\n{\n  lb_algo \"wrr\" ! trailing\n  real_server 198.18.1.1 80 { weight 3 }\n}\n");
    assert_eq!(s["scheduler"], "wrr");
    assert_eq!(s["realServers"][0]["weight"], 3);
    // A # inside quotes is not a comment.
    let s = spec("virtual_server 198.18.0.1 80 {\nreal_server 198.18.1.1 80 {\nHTTP_GET {\nurl {\npath \"/a#b\"\n}\n}\n}\n}");
    assert_eq!(s["healthCheck"]["path"], "/a#b");
}

#[test]
fn every_refusal_names_its_line() {
    let vs = |body: &str| format!("virtual_server 198.18.0.1 80 {{\n{body}\n}}\n");
    let rs = |body: &str| vs(&format!("real_server 198.18.1.1 80 {{\n{body}\n}}"));
    let cases: Vec<(String, &str)> = vec![
        (rs("MISC_CHECK {\nmisc_path /bin/true\n}"), "k.conf:3: MISC_CHECK is not supported by Sluice (it runs a script; use TCP_CHECK or HTTP_GET)"),
        (rs("SSL_GET {\n}"), "k.conf:3: SSL_GET is not supported by Sluice"),
        (rs("SMTP_CHECK {\n}"), "k.conf:3: SMTP_CHECK is not supported by Sluice"),
        (rs("UDP_CHECK {\n}"), "k.conf:3: UDP_CHECK is not supported by Sluice"),
        (rs("DNS_CHECK {\n}"), "k.conf:3: DNS_CHECK is not supported by Sluice"),
        (rs("alpha"), "k.conf:3: alpha is not supported by Sluice"),
        (rs("TCP_CHECK {\n}\nHTTP_GET {\nurl {\npath /\n}\n}"), "k.conf:5: HTTP_GET is not supported by Sluice (a second checker on one real server (the first is TCP_CHECK at line 3)"),
        (rs("TCP_CHECK {\nbindto 198.18.1.1\n}"), "k.conf:4: bindto is not supported by Sluice"),
        (rs("TCP_CHECK {\nconnect_ip 198.18.1.9\n}"), "k.conf:4: connect_ip is not supported by Sluice"),
        (rs("HTTP_GET {\nurl {\npath /\ndigest 9b3a0c85a887a256d6939da88aabd8cd\n}\n}"), "k.conf:6: digest is not supported by Sluice"),
        (rs("HTTP_GET {\nurl {\npath /\nstatus_code 200-299\n}\n}"), "k.conf:6: status_code is not supported by Sluice (\"200-299\""),
        (rs("HTTP_GET {\nurl {\npath /\n}\nurl {\npath /b\n}\n}"), "k.conf:7: url is not supported by Sluice (a second url (the first is at line 4)"),
        (rs("HTTP_GET {\nconnect_timeout 1\n}"), "k.conf:3: HTTP_GET: needs a url { path … } block"),
        (rs("HTTP_GET {\nurl {\nstatus_code 200\n}\n}"), "k.conf:4: url: needs a path"),
        (rs("HTTP_GET {\nurl {\npath nope\n}\n}"), "k.conf:3: HTTP_GET: path=\"nope\": must start with /"),
        (rs("weight 70000"), "k.conf:3: weight: must be an integer 0..65535, got \"70000\""),
        (rs("weight"), "k.conf:3: weight: needs a value"),
        (rs("uthreshold 5\nlthreshold 9"), "k.conf:1: virtual_server: spec.realServers[0].lowerThreshold: 9 is above the upper threshold 5"),
        (rs("inhibit_on_failure maybe"), "k.conf:3: inhibit_on_failure: must be on|off|true|false|yes|no, got \"maybe\""),
        (rs("TCP_CHECK {\nretry 100\n}"), "k.conf:4: retry: must be an integer 0..99, got \"100\""),
        (rs("TCP_CHECK {\nconnect_timeout 0\n}"), "k.conf:4: connect_timeout: must be seconds between 0.1 and 3600"),
        (rs("TCP_CHECK {\nconnect_port 0\n}"), "k.conf:4: connect_port: must be an integer 1..65535, got \"0\""),
        (rs("TCP_CHECK {\nsmtp_helo x\n}"), "k.conf:4: unknown keyword \"smtp_helo\" in TCP_CHECK"),
        (rs("wieght 1"), "k.conf:3: unknown keyword \"wieght\" in real_server"),
        (rs("lb_kind FNAT"), "k.conf:3: lb_kind: must be NAT, DR or TUN, got \"FNAT\""),
        (vs("lb_algo fastest"), "k.conf:2: lb_algo: unknown scheduler \"fastest\""),
        (vs("protocol ICMP"), "k.conf:2: protocol: must be TCP, UDP or SCTP, got \"ICMP\""),
        (vs("delay_loop soon"), "k.conf:2: delay_loop: must be seconds"),
        (vs("delay_loop 1e400"), "k.conf:2: delay_loop: must be seconds"),
        (vs("persistence_timeout 9999999999"), "k.conf:2: persistence_timeout: must be an integer 0..2678400"),
        (vs("persistence_timeout 60\npersistence_granularity 255.0.255.0"), "k.conf:1: virtual_server: spec.persistence.netmask"),
        (vs("sorry_server 198.18.1.9 80"), "k.conf:2: sorry_server is not supported by Sluice"),
        (vs("quorum 2"), "k.conf:2: quorum is not supported by Sluice"),
        (vs("virtualhost www.example.org"), "k.conf:2: virtualhost is not supported by Sluice"),
        (vs("ops"), "k.conf:2: ops is not supported by Sluice"),
        (vs("alpha"), "k.conf:2: alpha is not supported by Sluice"),
        (vs("lb_algo rr\nsh-port"), "k.conf:1: virtual_server: spec.schedulerFlags[0]: incompatible scheduler flag"),
        (vs("delay_loop 1 {\n}"), "k.conf:2: delay_loop: takes no { … } block"),
        (vs("real_server 198.18.1.1 80 {\n}\nreal_server 198.18.1.2 80 {\nTCP_CHECK {\n}\n}"), "k.conf:4: real_server: its health check differs from that of the real server at line 2"),
        (vs("real_server 198.18.1.1 80 {\nTCP_CHECK {\n}\n}\nreal_server 198.18.1.2 80 {\ninhibit_on_failure\nTCP_CHECK {\n}\n}"), "k.conf:6: real_server: its health check differs from that of the real server at line 2"),
        (vs("protocol UDP\nreal_server 198.18.1.1 80 {\nTCP_CHECK {\n}\n}"), "k.conf:4: TCP_CHECK: on a UDP or SCTP virtual_server it needs connect_port"),
        (vs("real_server 198.18.1.1 80 {\n}\nreal_server 198.18.1.1 80 {\n}"), "k.conf:1: virtual_server: spec.realServers[1]: 198.18.1.1:80 is listed twice"),
        (vs("real_server 2001:db8::1 80 {\n}"), "k.conf:1: virtual_server: spec.realServers[0].address: of another address family"),
        (vs("real_server 198.18.1.1 80 {\nlb_kind DR\n}\nreal_server 198.18.1.2 80 {\n}"), "k.conf:1: virtual_server: spec.realServers[1].method: real servers of one service with different methods"),
        (vs("real_server nowhere 80 {\n}"), "k.conf:2: real_server: \"nowhere\" is not an IP address"),
        ("virtual_server fwmark 7 {\n}\n".into(), "k.conf:1: virtual_server is not supported by Sluice (no netfilter mark"),
        ("virtual_server group G {\n}\n".into(), "k.conf:1: virtual_server is not supported by Sluice (Sluice has no virtual server groups"),
        ("virtual_server_group G {\n198.18.0.1 80\n}\n".into(), "k.conf:1: virtual_server_group is not supported by Sluice"),
        ("virtual_server 198.18.0.1 {\n}\n".into(), "k.conf:1: virtual_server: takes an address and a port"),
        ("virtual_server 198.18.0.1 99999 {\n}\n".into(), "k.conf:1: virtual_server: port must be 0..65535, got \"99999\""),
        ("virtual_server 198.18.0.1 80\n".into(), "k.conf:1: virtual_server: needs a { … } block"),
        ("virtual_server 198.18.0.1 0 {\npersistence_timeout 60\n}\n".into(), "k.conf:1: virtual_server: spec.port: port 0"),
        (format!("{}{}", vs(""), vs("")), "k.conf:4: virtual_server: 198.18.0.1 80 is defined twice (first at k.conf:1)"),
        ("global_defs {\n}\nlvs_flush\n".into(), "k.conf:3: unknown keyword \"lvs_flush\" in the top level"),
        ("global_defs {\n@main router_id a\n}\n@main virtual_server 198.18.0.1 80 {\n}\n".into(), "k.conf:4: @main is not supported by Sluice (conditional configuration"),
        ("global_defs {\n}\n$VIP=198.18.0.1\n".into(), "k.conf:3: $VIP=198.18.0.1 is not supported by Sluice (configuration variables"),
        ("global_defs {\n".into(), "k.conf:1:13: block opened here is never closed (missing })"),
        ("global_defs {\n}\n}\n".into(), "k.conf:3:1: } closes no block"),
        ("global_defs {\n}\n{\n}\n".into(), "k.conf:3:1: { opens a block without a keyword"),
        ("global_defs {\n router_id \"lb\n}\n".into(), "k.conf:2:12: unterminated quoted string"),
        ("global_defs {\n}\ninclude\n".into(), "k.conf:3:1: include takes one file name or pattern"),
    ];
    for (text, want) in &cases {
        let e = err(text);
        assert!(e.starts_with(want), "{text}\n got: {e}\nwant: {want}");
    }
}

#[test]
fn detection_is_by_syntax() {
    assert!(is_keepalived(EXAMPLE));
    assert!(is_keepalived(
        "\u{feff}! c\n\nvirtual_server 198.18.0.1 80 {\n}\n"
    ));
    assert!(is_keepalived("include /etc/keepalived/conf.d/*.conf\n"));
    assert!(is_keepalived("vrrp_instance VI_1 {\n}"));
    assert!(!is_keepalived("apiVersion: v1\nkind: Service\n"));
    assert!(!is_keepalived(
        "# virtual_server in a comment\napiVersion: v1\n"
    ));
    assert!(!is_keepalived("---\nglobal_defs: 1\n"));
    assert!(
        !is_keepalived("global_defs: {}\n"),
        "a YAML key is not a keyword"
    );
    assert!(!is_keepalived(""));
}

#[test]
fn includes_are_relative_to_the_including_file_and_globbed() {
    let d = Scratch::new("include");
    d.write(
        "conf.d/10-web.conf",
        "virtual_server 198.18.0.10 80 {\nreal_server 198.18.1.1 80 {\n}\n}\n",
    );
    d.write("conf.d/20-api.conf", "include ../more/api.conf\n");
    d.write(
        "more/api.conf",
        "virtual_server 198.18.0.11 443 {\n  weight 1\n}\n",
    );
    d.write("conf.d/notes.txt", "not keepalived {");
    let main = d.write(
        "keepalived.conf",
        "global_defs {\n}\ninclude conf.d/*.conf\ninclude empty.d/*.conf\n",
    );
    let e = parse_file(&main).unwrap_err().to_string();
    // The error names the included file and its line.
    assert!(
        e.ends_with("more/api.conf:2: unknown keyword \"weight\" in virtual_server"),
        "{e}"
    );
    d.write("more/api.conf", "virtual_server 198.18.0.11 443 {\n}\n");
    let p = parse_file(&main).unwrap();
    let names: Vec<&str> = p
        .objects
        .iter()
        .map(|(_, o)| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tcp-198-18-0-10-80", "tcp-198-18-0-11-443"]);
    assert!(p.objects[1].0.file.ends_with("more/api.conf"));

    // A missing plain file is an error; a loop is caught.
    let m2 = d.write("missing.conf", "include nowhere.conf\n");
    assert!(matches!(parse_file(&m2), Err(KeepalivedError::Io { .. })));
    let l = d.write("loop.conf", "include loop.conf\n");
    let e = parse_file(&l).unwrap_err().to_string();
    assert!(e.contains("includes nest deeper than 8"), "{e}");
    let g = d.write("glob-dir.conf", "include */x.conf\n");
    let e = parse_file(&g).unwrap_err().to_string();
    assert!(
        e.contains("wildcards are supported in the file name only"),
        "{e}"
    );
}

#[test]
fn the_file_source_reads_keepalived_and_yaml_alike() {
    let d = Scratch::new("source");
    let k = d.write("lb.conf", EXAMPLE);
    let objs = crate::source::file::read(&k, &CompileCtx::default()).unwrap();
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[0]["kind"], "VirtualService");
    let y = d.write("lb.yaml", include_str!("../../../../examples/ipvs.yaml"));
    let objs = crate::source::file::read(&y, &CompileCtx::default()).unwrap();
    assert_eq!(objs.len(), 2);
    let bad = d.write("bad.conf", "virtual_server 198.18.0.1 80 {\n real_server 198.18.1.1 80 {\n  MISC_CHECK {\n  }\n }\n}\n");
    let e = crate::source::file::read(&bad, &CompileCtx::default())
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("bad.conf:3: MISC_CHECK is not supported by Sluice (it runs a script; use TCP_CHECK or HTTP_GET)"), "{e}");
}

/// Words keepalived.conf is made of, to build near-valid files from.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("virtual_server".to_string()),
        Just("real_server".to_string()),
        Just("TCP_CHECK".to_string()),
        Just("HTTP_GET".to_string()),
        Just("url".to_string()),
        Just("path".to_string()),
        Just("status_code".to_string()),
        Just("delay_loop".to_string()),
        Just("connect_timeout".to_string()),
        Just("retry".to_string()),
        Just("weight".to_string()),
        Just("lb_algo".to_string()),
        Just("lb_kind".to_string()),
        Just("persistence_timeout".to_string()),
        Just("persistence_granularity".to_string()),
        Just("include".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\n".to_string()),
        Just("\"".to_string()),
        Just("#".to_string()),
        Just("198.18.0.1".to_string()),
        Just("2001:db8::1".to_string()),
        Just("80".to_string()),
        Just("-1".to_string()),
        Just("1e309".to_string()),
        Just("NaN".to_string()),
        Just("0.0000001".to_string()),
        "[a-z0-9./*\\[\\]-]{0,8}".prop_map(|s| s),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_text_panics(text in "\\PC{0,300}") {
        let _ = parse_str(&text);
        let _ = is_keepalived(&text);
    }

    #[test]
    fn no_keyword_soup_panics(words in proptest::collection::vec(word(), 0..80)) {
        let text = format!("virtual_server 198.18.0.1 80 {{\n{}", words.join(" "));
        let _ = parse_str(&text);
        let _ = parse_str(&words.join(" "));
    }
}
