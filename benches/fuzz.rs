//! The fuzz targets of `streamcast::testkit::fuzz`, at length:
//! `scripts/fuzz [inputs per target] [seed]` (default 1,000,000 and 1).
//! Prints one line per target and exits 1 on the first broken invariant,
//! printing the input that broke it.

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let seed: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    // Caught panics are reported by the harness with their input; the
    // default hook's backtrace for each would drown them.
    std::panic::set_hook(Box::new(|_| {}));
    println!("| target | inputs | accepted | refused | seconds | inputs/s |");
    println!("|---|---|---|---|---|---|");
    for target in streamcast::testkit::fuzz::TARGETS {
        match streamcast::testkit::fuzz::run(target, seed, n) {
            Ok(r) => println!(
                "| {} | {} | {} | {} | {:.1} | {:.0} |",
                r.target,
                r.inputs,
                r.accepted,
                r.refused,
                r.seconds,
                r.inputs as f64 / r.seconds
            ),
            Err(f) => {
                eprintln!("FAILED {f}");
                std::process::exit(1);
            }
        }
    }
}
