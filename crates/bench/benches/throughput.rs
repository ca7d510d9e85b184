//! `cargo bench --bench throughput [-- --messages N]`: the same run as the
//! `throughput` binary. See the crate docs for what it measures.
//!
//! `--cases` picks the cases (default `pull,push,restart,keyed,pipeline`;
//! `metrics`, `continuous` and `failover` run only when named); the keyed
//! workers alone, for example:
//! `cargo bench -p ractor-jetstream-bench --bench throughput -- --cases keyed`.

fn main() -> std::process::ExitCode {
    let options = match ractor_jetstream_bench::Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("throughput: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("throughput: cannot start a runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ractor_jetstream_bench::run(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("throughput: error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
