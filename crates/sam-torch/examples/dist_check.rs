//! Checks the c10d Gloo bridge across the ranks of a real launch: run it under `srun`, torchrun
//! or by hand with `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT` set. Every rank runs all
//! collectives and compares with values computed by hand; exit status 0 only if all agree.
//!
//! ```text
//! srun -n 2 target/debug/examples/dist_check [--timeout-s 30] [--gloo-host 127.0.0.1] [--dry-run]
//! ```
use std::process::ExitCode;
use std::time::Duration;

#[path = "../tests/common/dist_worker.rs"]
mod dist_worker;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut timeout = Duration::from_secs(30);
    let mut gloo_host = None;
    let mut mode = "check".to_owned();
    let mut dry_run = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout-s" => match it.next().and_then(|v| v.parse::<u64>().ok()) {
                Some(s) => timeout = Duration::from_secs(s),
                None => return usage("--timeout-s needs whole seconds"),
            },
            "--gloo-host" => match it.next() {
                Some(h) => gloo_host = Some(h.clone()),
                None => return usage("--gloo-host needs a host name or address"),
            },
            "--mode" => match it.next() {
                Some(m) => mode = m.clone(),
                None => return usage("--mode needs check, victim or reducer"),
            },
            "--dry-run" => dry_run = true,
            "-h" | "--help" => {
                println!(
                    "dist_check [--timeout-s S (30)] [--gloo-host HOST] [--mode check|victim|reducer] [--dry-run]"
                );
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let env = match sam_torch::LaunchEnv::from_env() {
        Ok(env) => env,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if dry_run {
        println!("{env}");
        return ExitCode::SUCCESS;
    }
    match dist_worker::run(&env, &mode, timeout, gloo_host.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: rank {}: {err}", env.rank);
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg} (see --help)");
    ExitCode::from(2)
}
