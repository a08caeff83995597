//! `containerd-shim-peapod-v2`: peapod as a containerd runtime v2 shim (see the library).

fn main() -> std::process::ExitCode {
    containerd_shim_peapod::main()
}
