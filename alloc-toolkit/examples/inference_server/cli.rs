//! The command line, parsed by clap: every number checked against its
//! range, with a message that names the value and the range.

use std::time::Duration;

use clap::Parser;

use crate::server::ServerConfig;

/// An inference server on the memory toolkit: by default it starts, runs a
/// built-in load over real HTTP on 127.0.0.1, prints latency, throughput and
/// per-request memory, and exits. With `--serve` it keeps serving.
#[derive(Parser, Debug)]
#[command(name = "inference_server")]
pub struct Options {
    /// Keep serving (loopback only) until Ctrl-C instead of running the load.
    #[arg(long)]
    pub serve: bool,
    /// Port on 127.0.0.1 (0: any free port). Default: 3000 with --serve, any
    /// free port for the load run.
    #[arg(long)]
    pub port: Option<u16>,
    /// Requests the load run sends.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub requests: u32,
    /// Connections the load run sends them over, at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Most /infer requests in progress at once; the excess is answered 503
    /// with Retry-After.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_in_flight: u32,
    /// Seconds a client has to send a request's head; also the longest a
    /// kept-alive connection stays idle (0.001 to 3600).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    pub header_timeout: Duration,
    /// Seconds a client has to send a request's body once its head is in
    /// (0.001 to 3600; 408 and the connection closed after).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    pub body_timeout: Duration,
    /// Largest request body, bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..=(64 << 20)))]
    pub max_body_bytes: u32,
    /// Heap sampling: mean bytes between samples (0: off). Default: the
    /// ALLOC_PROFILE_RATE environment variable if set, else 524288 (512 KiB).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=(1u64 << 40)))]
    pub profile_rate: Option<u64>,
}

/// A timeout in seconds, from 0.001 to 3600.
fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.001..=3600.0).contains(&v) {
        return Err(format!("{v} s is outside 0.001..=3600 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Options {
    /// The port to bind.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.serve { 3000 } else { 0 })
    }

    /// The server's limits and timeouts.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_body_bytes: self.max_body_bytes as usize,
            max_in_flight: self.max_in_flight as usize,
            ..ServerConfig::default()
        }
    }
}
