//! `containerd-shim-peapod-v2`: peapod as a containerd runtime v2 shim (see `peapod::shim`).

fn main() -> std::process::ExitCode {
    peapod::shim::main()
}
