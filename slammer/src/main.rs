fn main() -> std::process::ExitCode {
    slammer::cli::main()
}
