//! The known-sites program (`alloc_benches::sites`) under dhat-rs (exact: a
//! backtrace per allocation): the three sites' shares of allocated bytes
//! (dhat's `tb`) and of the bytes live at the end (`eb`), from dhat's JSON,
//! for comparison with `profile_sites`.
//! Usage: `profile_sites_dhat [TOTAL_MIB]` (default 4096).
#[global_allocator]
static A: dhat::Alloc = dhat::Alloc;

use alloc_benches::sites::{SITES, run, shares};

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4096);
    let path = std::env::temp_dir().join(format!("dhat-sites-{}.json", std::process::id()));
    let t0 = std::time::Instant::now();
    let profiler = dhat::Profiler::builder().file_name(&path).build();
    let (exact, blocks) = run(mib << 20);
    let secs = t0.elapsed().as_secs_f64();
    drop(profiler);
    drop(blocks);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    if std::env::var_os("DHAT_KEEP").is_none() {
        let _ = std::fs::remove_file(&path);
    }
    let ftbl: Vec<&str> = j["ftbl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let mut tb = [0f64; 3];
    let mut eb = [0f64; 3];
    for pp in j["pps"].as_array().unwrap() {
        let frames: Vec<&str> = pp["fs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| ftbl[i.as_u64().unwrap() as usize])
            .collect();
        for (k, n) in SITES.iter().enumerate() {
            if frames.iter().any(|f| f.contains(&format!("sites::{n} "))) {
                tb[k] += pp["tb"].as_f64().unwrap();
                eb[k] += pp["eb"].as_f64().unwrap();
            }
        }
    }
    let (wa, wi) = (
        shares(exact.allocated.map(|v| v as f64)),
        shares(exact.in_use.map(|v| v as f64)),
    );
    let (ga, gi) = (shares(tb), shares(eb));
    println!(
        "alloc exact {:5.2} {:5.2} {:5.2} % | dhat {:5.2} {:5.2} {:5.2} %",
        wa[0], wa[1], wa[2], ga[0], ga[1], ga[2]
    );
    println!(
        "inuse exact {:5.2} {:5.2} {:5.2} % | dhat {:5.2} {:5.2} {:5.2} % (dhat: bytes live at exit)",
        wi[0], wi[1], wi[2], gi[0], gi[1], gi[2]
    );
    println!("run {secs:.2} s under dhat");
}
