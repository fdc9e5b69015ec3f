//! The `spotd` binary: everything is in the library (`spotd::cli`).
fn main() -> std::process::ExitCode {
    spotd::cli::main()
}
