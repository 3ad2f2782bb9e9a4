//! `delay-link --to tcp://HOST:PORT --delay-us N`: a TCP relay on a free loopback port that
//! holds each segment `N` microseconds in each direction ([`tests::delay`]), for benchmarks at
//! a cluster's latency. Prints `listening on tcp://127.0.0.1:PORT`, then serves until killed.

use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "A TCP relay that delays every segment, each way")]
struct Args {
    /// Where connections go.
    #[arg(long)]
    to: String,
    /// Delay each way, in microseconds.
    #[arg(long, default_value_t = 250)]
    delay_us: u64,
}

fn main() {
    let args = Args::parse();
    let link = tests::delay::DelayLink::start(&args.to, Duration::from_micros(args.delay_us));
    println!("listening on {}", link.address);
    loop {
        std::thread::park();
    }
}
