//! `/debug/pprof/heap` of the flagship server under load: the pprof file
//! decodes (a reader built on prost, with pprof's `profile.proto` messages
//! as alloc-host declares them) into well-formed tables (every sample's
//! locations exist, every location's functions exist, string 0 empty) that
//! name the request path's functions under the `request` scope; the SVG and
//! text formats answer; bad parameters get a 400 that names the value.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use alloc_core::{CachingAllocator, Config, HostBackend};
use alloc_host::TrackingAllocator;
use alloc_host::profile::proto::Profile;
use alloc_toolkit::{MemoryMonitor, MonitorConfig};

#[path = "../examples/inference_server/server.rs"]
#[allow(dead_code)]
mod server;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

include!("support/start.rs");

/// One HTTP/1.1 request on its own connection: status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(body).unwrap();
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).unwrap();
    let split = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&got[..split]).into_owned();
    let status: u16 = head[9..12].parse().unwrap();
    let mut body = got[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    (status, body)
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn decode(gz: &[u8]) -> Profile {
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip'd");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .unwrap();
    prost::Message::decode(&raw[..]).unwrap()
}

/// Checks the tables are well-formed; returns the function names.
fn well_formed(p: &Profile, types: [&str; 2]) -> Vec<String> {
    let st = &p.string_table;
    assert_eq!(st[0], "");
    let s = |i: i64| st[usize::try_from(i).unwrap()].clone();
    let got: Vec<String> = p.sample_type.iter().map(|t| s(t.r#type)).collect();
    assert_eq!(got, types);
    let locs: std::collections::HashSet<u64> = p.location.iter().map(|l| l.id).collect();
    let fns: std::collections::HashSet<u64> = p.function.iter().map(|f| f.id).collect();
    assert_eq!(locs.len(), p.location.len(), "location ids unique");
    assert_eq!(fns.len(), p.function.len(), "function ids unique");
    for smp in &p.sample {
        assert_eq!(smp.value.len(), 2);
        assert!(smp.location_id.iter().all(|id| locs.contains(id)));
    }
    for l in &p.location {
        assert!(l.line.iter().all(|x| fns.contains(&x.function_id)));
    }
    p.function.iter().map(|f| s(f.name)).collect()
}

#[test]
fn heap_profile_under_load_names_the_request_path() {
    alloc_host::set_sample_rate(64 << 10);
    let (_rt, addr) = start(server::ServerConfig::default(), 256 << 20);
    // Load: 8 clients, 30 requests each, while the profile is read.
    let clients: Vec<_> = (0..8u64)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..30u64 {
                    let tokens: Vec<u32> =
                        (0..200).map(|t| ((t * 7 + i + c) % 4096) as u32).collect();
                    let body = serde_json::to_vec(&server::InferRequest {
                        id: c * 100 + i,
                        tokens,
                    })
                    .unwrap();
                    let (status, _) = http(addr, "POST", "/infer", &body);
                    assert!(status == 200 || status == 503, "status {status}");
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = http(addr, "GET", "/debug/pprof/heap", b"");
    assert_eq!(status, 200);
    well_formed(&decode(&body), ["inuse_objects", "inuse_space"]);
    for c in clients {
        c.join().unwrap();
    }
    let (status, body) = http(
        addr,
        "GET",
        "/debug/pprof/heap?kind=alloc&scope=request",
        b"",
    );
    assert_eq!(status, 200);
    let p = decode(&body);
    let names = well_formed(&p, ["alloc_objects", "alloc_space"]);
    assert!(!p.sample.is_empty(), "samples in the request scope");
    for want in ["server::infer", "server::Model::forward"] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "{want} not in {names:?}"
        );
    }
    let scope_key = p.string_table.iter().position(|s| s == "scope").unwrap() as i64;
    for smp in &p.sample {
        let l = smp.label.iter().find(|l| l.key == scope_key).unwrap();
        assert_eq!(p.string_table[l.str as usize], "request");
    }
    let (status, svg) = http(
        addr,
        "GET",
        "/debug/pprof/heap?kind=alloc&scope=request&format=svg",
        b"",
    );
    assert_eq!(status, 200);
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("forward"));
    let (status, text) = http(addr, "GET", "/debug/pprof/heap?format=text&kind=alloc", b"");
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(text)
            .unwrap()
            .contains("# heap profile: alloc process")
    );
    let (status, msg) = http(addr, "GET", "/debug/pprof/heap?kind=bogus", b"");
    assert_eq!(status, 400);
    let msg = String::from_utf8(msg).unwrap();
    assert!(
        msg.contains("\"bogus\"") && msg.contains("kind=inuse"),
        "{msg}"
    );
    // The dashboard's panel lists the request scope's sites.
    let (status, page) = http(addr, "GET", "/debug/memory", b"");
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("Top allocation sites"), "panel present");
}
