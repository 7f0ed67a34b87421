fn main() {
    // Like other Unix tools, end quietly when the reader of stdout goes away (`| head`).
    // SAFETY: setting a signal disposition before any thread is started.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    std::process::exit(fleet_agent::main());
}
