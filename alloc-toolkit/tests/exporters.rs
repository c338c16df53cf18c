//! One exporter, one table: the Prometheus text declares each family once,
//! with one type, and never labels a scope instance; every row of
//! `DEVICE_COLUMNS` reaches all four outputs (Prometheus, JSON, the dashboard
//! page, the text report).

use std::collections::HashMap;

use alloc_toolkit::columns::{DEVICE_COLUMNS, Kind};
use alloc_toolkit::{
    DashboardData, DeviceInfo, DeviceMemory, json, memory_report, prometheus, register_device,
    render_html, unregister_device,
};

const MIB: u64 = 1 << 20;

/// A device whose every figure is known and different from the others, so a
/// column shown in the wrong place or not at all is seen.
struct Fixed;

impl DeviceMemory for Fixed {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            name: String::new(),
            backend: "fixed".into(),
            allocated: MIB,
            peak_allocated: 2 * MIB,
            reserved: 3 * MIB,
            peak_reserved: 4 * MIB,
            cached: 5 * MIB,
            limit: Some(6 * MIB),
            free: Some(7 * MIB),
            total: Some(8 * MIB),
            efficiency: 0.123,
            num_ooms: 17,
            num_alloc_retries: 23,
        }
    }

    fn empty_cache(&self) -> u64 {
        0
    }
}

const DEV: &str = "exporters-test-dev";

/// The family a sample line belongs to: its name less the histogram and
/// counter suffixes the family's `# TYPE` line does not carry.
fn family_of<'a>(sample: &'a str, declared: &HashMap<&str, &str>) -> Option<&'a str> {
    let name = sample.split(['{', ' ']).next()?;
    if declared.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|base| declared.get(base) == Some(&"histogram"))
}

/// `row` has every column's text of the fixed device, in table order.
fn in_order(row: &str, d: &DeviceInfo, what: &str) {
    let mut rest = row;
    for c in DEVICE_COLUMNS {
        let text = c.text(d);
        let at = rest
            .find(&text)
            .unwrap_or_else(|| panic!("{what}: column `{}` ({text}) missing in\n{row}", c.key));
        rest = &rest[at + text.len()..];
    }
}

#[test]
fn one_exporter_and_every_column_in_every_output() {
    register_device(DEV, std::sync::Arc::new(Fixed));
    let mut d = Fixed.device_info();
    d.name = DEV.into();
    // Open scopes: an instance label would show here.
    let _outer = alloc_host::scope("exporters-test-request");
    let _inner = alloc_host::scope("exporters-test-inner");

    // Prometheus: each family declared once, with one type and a help.
    let text = prometheus();
    let mut declared: HashMap<&str, &str> = HashMap::new();
    for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = l.split_once(' ').unwrap();
        assert!(
            declared.insert(name, kind).is_none(),
            "{name} declared twice:\n{text}"
        );
    }
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(helps, declared.len(), "one help per family");
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(!line.contains("id=\""), "an instance label: {line}");
        assert!(
            family_of(line, &declared).is_some(),
            "a sample of no declared family: {line}"
        );
    }
    assert!(
        text.contains("scope=\"exporters-test-request\""),
        "open scopes are exported by name:\n{text}"
    );
    for c in DEVICE_COLUMNS {
        let (family, kind) = match c.kind {
            Kind::Gauge => (c.metric.to_owned(), "gauge"),
            Kind::Counter => (format!("{}_total", c.metric), "counter"),
        };
        assert_eq!(declared.get(family.as_str()), Some(&kind), "{family}");
        let sample = format!("{family}{{device=\"{DEV}\",backend=\"fixed\"}} ");
        assert!(text.contains(&sample), "Prometheus: no {sample}\n{text}");
    }

    // JSON: one key per column, with the figure.
    let v: serde_json::Value = serde_json::from_str(&json()).unwrap();
    let dev = v["memory"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == DEV)
        .expect("the device in the JSON");
    let want = serde_json::to_value(&d).unwrap();
    for c in DEVICE_COLUMNS {
        assert!(!dev[c.key].is_null(), "JSON: no `{}` in {dev}", c.key);
        assert_eq!(dev[c.key], want[c.key], "JSON: `{}`", c.key);
    }

    // The dashboard page: a header per column, and the device's row.
    let html = render_html(&DashboardData::now("exporters", Vec::new()));
    let header: String = std::iter::once("device")
        .chain(DEVICE_COLUMNS.iter().map(|c| c.title))
        .map(|t| format!("<th>{t}</th>"))
        .collect();
    assert!(html.contains(&header), "page: no header {header}\n{html}");
    let row = html
        .lines()
        .find(|l| l.starts_with(&format!("<tr><td>{DEV} (fixed)</td>")))
        .expect("the device's row in the page");
    assert_eq!(
        row.matches("<td>").count(),
        1 + DEVICE_COLUMNS.len(),
        "{row}"
    );
    in_order(row, &d, "page");

    // The text report: a title per column, and the device's row.
    let report = memory_report();
    let header = report
        .lines()
        .find(|l| l.starts_with("device "))
        .expect("the device table's header");
    let mut rest = header;
    for c in DEVICE_COLUMNS {
        let at = rest
            .find(c.title)
            .unwrap_or_else(|| panic!("report: no title `{}` in\n{header}", c.title));
        rest = &rest[at + c.title.len()..];
    }
    let row = report
        .lines()
        .find(|l| l.starts_with(&format!("{DEV} (fixed)")))
        .expect("the device's row in the report");
    in_order(row, &d, "report");

    unregister_device(DEV);
}
