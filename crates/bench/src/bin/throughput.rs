//! The throughput benchmark as a release binary:
//! `cargo run --release -p ractor-jetstream-bench --bin throughput -- --messages 1000000`.
//! See the crate docs for what it measures.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = match ractor_jetstream_bench::Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("throughput: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match ractor_jetstream_bench::run(options).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("throughput: error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
