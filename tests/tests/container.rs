//! Privileged end to end: the container image from `cargo xtask image`, run
//! the way deploy/ runs it, counting processes started on the host.
use std::process::Command;

use serde_json::Value;
use tests::{assert_windows_account_for_every_event, container_image, hits, marker, payloads, run, Agent, Container};

/// What the agent reads from the host (README "Deployment"): tracefs, and
/// the host's / read-only at /host for every host file. BTF needs no mount:
/// a privileged container's own sysfs has /sys/kernel/btf.
const HOST_MOUNTS: [&str; 2] = ["/sys/kernel/tracing:/sys/kernel/tracing", "/:/host:ro"];

#[test]
fn container_counts_host_execs_exactly() {
    let Some(image) = container_image("container_counts_host_execs_exactly") else {
        return;
    };
    let container = Container::new("ctr");
    let agent = Agent::spawn(container.run_command(
        &image,
        &HOST_MOUNTS,
        &["run", "--interval", "PT2S", "--host-root", "/host"],
    ))
    .unwrap();
    let m = marker("ctr-exec");
    for _ in 0..20 {
        assert!(run(Command::new("/bin/true").args([&m, "arg"])).unwrap().success());
    }
    let events = agent.stop_with(|_| container.stop()).unwrap();

    let cmdline = format!("/bin/true {m} arg");
    let mine = |p: &Value| p["commandline"] == cmdline.as_str() && p["type"] == "exec";
    assert_eq!(hits(&events, "ProcessCreate", mine), 20);
    let rec = payloads(&events, "ProcessCreate").into_iter().find(|p| mine(p)).unwrap().clone();
    // Names come from the host's passwd, read through --host-root.
    assert_eq!(rec["user_name"], "root");
    // Host PIDs: the container shares the host's PID namespace.
    assert_eq!(rec["parent_process_id"], std::process::id());
    assert_windows_account_for_every_event(&events, "ProcessCreate");
}

#[test]
fn container_without_tracefs_says_what_to_mount() {
    let Some(image) = container_image("container_without_tracefs_says_what_to_mount") else {
        return;
    };
    let container = Container::new("ctr-notracefs");
    let out = container.run_command(&image, &[], &["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("in a container: mount the host's /sys/kernel/tracing"), "stderr: {stderr}");
}
