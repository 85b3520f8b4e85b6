//! The binary's command line: errors a person sees. No root needed.
use std::process::Command;

use tests::hitcount_bin;

fn hitcount(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(hitcount_bin()).args(args).output().expect("run hitcount");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn bad_flag_is_one_clear_error() {
    let (code, _, err) = hitcount(&["run", "--interval", "1 hour"]);
    assert_ne!(code, 0);
    assert!(err.contains("--interval") && err.contains("ISO 8601"), "{err}");
    let (code, _, err) = hitcount(&["run", "--frobnicate"]);
    assert_ne!(code, 0);
    assert!(err.contains("--frobnicate"), "{err}");
}

#[test]
fn bad_config_file_names_every_field() {
    let path = std::env::temp_dir().join(format!("hc-bad-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"cacheSizeProcessCreate":0,"aggregationIntervalProcessCreate":"soon","nope":true}"#)
        .unwrap();
    for args in [vec!["run", "--config", path.to_str().unwrap()], vec!["config", "validate", path.to_str().unwrap()]] {
        let (code, out, err) = hitcount(&args);
        assert_eq!(code, 1, "{out}{err}");
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{err}"));
        for field in ["aggregationIntervalProcessCreate", "nope"] {
            assert!(line.contains(field), "{line}");
        }
    }
    // Range errors surface once the types are right.
    std::fs::write(&path, r#"{"cacheSizeProcessCreate":0}"#).unwrap();
    let (code, _, err) = hitcount(&["config", "validate", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("cacheSizeProcessCreate: must be between 1 and 65536, got 0"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn missing_config_file_says_so() {
    let (code, _, err) = hitcount(&["run", "--config", "/nonexistent/hc.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read config file /nonexistent/hc.json"), "{err}");
}

#[test]
fn config_defaults_validate_and_schema_agree() {
    let (code, defaults, _) = hitcount(&["config", "defaults"]);
    assert_eq!(code, 0);
    let path = std::env::temp_dir().join(format!("hc-defaults-{}.json", std::process::id()));
    std::fs::write(&path, &defaults).unwrap();
    let (code, out, err) = hitcount(&["config", "validate", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::remove_file(&path).unwrap();
    let (code, schema, _) = hitcount(&["config", "schema"]);
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
    let defaults: serde_json::Value = serde_json::from_str(&defaults).unwrap();
    let props = schema["properties"].as_object().unwrap();
    assert_eq!(props.len(), defaults.as_object().unwrap().len());
    for k in defaults.as_object().unwrap().keys() {
        assert!(props.contains_key(k), "{k} not in schema");
    }
}

#[test]
fn check_reports_this_kernel() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tests::skip("check_reports_this_kernel", "not root");
        return;
    }
    let (code, out, err) = hitcount(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("load and attach programs"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // Which TCP byte source this kernel gets, as tracefs shows it.
    let has_calls = std::path::Path::new("/sys/kernel/tracing/events/sock/sock_send_length").exists();
    let tcp = out.lines().find(|l| l.contains("TCP bytes")).expect("a TCP bytes line");
    let expected = if has_calls { "per send/receive call" } else { "per packet" };
    assert!(tcp.contains(expected), "{tcp}");
}

#[test]
fn invalid_configs_through_the_binary_name_the_field() {
    let cases = [
        (r#"{"maxMessageSizeInBytes":300000}"#, "maxMessageSizeInBytes: must be larger than 8192 and less than 262144"),
        (r#"{"maxLocalCacheSizeInBytes":8192}"#, "maxLocalCacheSizeInBytes: must be larger than 8192"),
        (r#"{"eventPriorityLogin":"Sometimes"}"#, "eventPriorityLogin: unknown variant `Sometimes`"),
        (r#"{"lowPriorityMessageFrequency":"P8D"}"#, "lowPriorityMessageFrequency: must be between PT1S and P7D"),
        (r#"{"snapshotFrequency":"13 hours"}"#, "snapshotFrequency: `13 hours` is not an ISO 8601 duration"),
        (r#"{"collectorEnabledProcess":"no"}"#, "collectorEnabledProcess: invalid type"),
        ("{\"eventPriorityOSBaseline\":\"Low\",", "(document): not valid JSON"),
    ];
    let path = std::env::temp_dir().join(format!("hc-bad-corpus-{}.json", std::process::id()));
    for (json, expected) in cases {
        std::fs::write(&path, json).unwrap();
        for args in
            [vec!["run", "--config", path.to_str().unwrap()], vec!["config", "validate", path.to_str().unwrap()]]
        {
            let (code, _, err) = hitcount(&args);
            assert_eq!(code, 1, "{json}: {err}");
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_mqtt_settings_stop_the_agent_before_it_loads_anything() {
    let cases: [(&[&str], &str); 5] = [
        (&["--mqtt-url", "http://broker"], "--mqtt-url `http://broker`: the scheme must be mqtt:// or mqtts://"),
        (&["--mqtt-url", "mqtts://127.0.0.1:1"], "mqtts:// needs --mqtt-ca-file"),
        (
            &["--mqtt-url", "mqtts://127.0.0.1:1", "--mqtt-ca-file", "/nonexistent/ca.pem"],
            "cannot read CA file /nonexistent/ca.pem",
        ),
        (&["--mqtt-url", "mqtt://127.0.0.1:1", "--device-id", "a/b"], "device id `a/b`"),
        (
            &["--mqtt-url", "mqtt://127.0.0.1:1", "--mqtt-password-file", "/nonexistent/pw"],
            "cannot read password file /nonexistent/pw",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        let (code, _, err) = hitcount(&args);
        assert_eq!(code, 1, "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
    // clap refuses half a client identity and a spool without a broker.
    let (code, _, err) = hitcount(&["run", "--mqtt-client-cert", "/c"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = hitcount(&["run", "--spool-dir", "/tmp/x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--mqtt-url"), "{err}");
}

/// Issue 9.5: `/dev/zero` as a file input grew the agent to 2.6 GB. Each is
/// read up to its bound, refused past it, and the error names the bound.
#[test]
fn endless_file_inputs_fail_fast_naming_their_bound() {
    let cases: [(&[&str], &str); 4] = [
        (&["config", "validate", "/dev/zero"], "cannot read config file /dev/zero: larger than 65536 bytes"),
        (&["run", "--config", "/dev/zero"], "cannot read config file /dev/zero: larger than 65536 bytes"),
        (
            &["run", "--mqtt-url", "mqtt://127.0.0.1:1", "--mqtt-password-file", "/dev/zero"],
            "cannot read password file /dev/zero: larger than 4096 bytes",
        ),
        (
            &["run", "--mqtt-url", "mqtts://127.0.0.1:1", "--mqtt-ca-file", "/dev/zero"],
            "cannot read CA file /dev/zero: larger than 1048576 bytes",
        ),
    ];
    for (args, expected) in cases {
        let started = std::time::Instant::now();
        let (code, _, err) = hitcount(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{args:?} took {:?}", started.elapsed());
    }
}
