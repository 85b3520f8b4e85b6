//! The agent's configuration: one object with the spec's property names
//! (seed 004 for priorities and frequencies, seeds 000-001 for the per-event
//! aggregation settings). Sources, later wins: built-in defaults < file < CLI.
//!
//! Every property is optional in the file; what is absent takes its default.
//! Validation names every bad field, not only the first one: a file is
//! checked property by property before the ranges are checked.
use std::{fmt, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::{parse_iso8601, Iso8601};

/// How urgently events of a type are sent; `Off` means not collected at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Priority {
    High,
    Medium,
    Low,
    Off,
}

impl Priority {
    pub fn enabled(self) -> bool {
        self != Priority::Off
    }
}

/// An ISO 8601 duration in a config file (`"PT1H"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoDuration(pub Duration);

impl Serialize for IsoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Iso8601(self.0))
    }
}

impl<'de> Deserialize<'de> for IsoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_iso8601(&s).map(IsoDuration).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for IsoDuration {
    fn schema_name() -> String {
        "Iso8601Duration".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            string: Some(Box::new(schemars::schema::StringValidation {
                pattern: Some(r"^P(\d+W|\d+D)?(T(\d+H)?(\d+M)?(\d+([.,]\d{1,9})?S)?)?$".into()),
                ..Default::default()
            })),
            metadata: Some(Box::new(schemars::schema::Metadata {
                description: Some("ISO 8601 duration, days to seconds: PT1H, PT30S, P1DT12H".into()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

/// The configuration object as written in a file (or, later, sent as the
/// desired configuration). Every property is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "Hitcount agent configuration")]
pub struct RawConfig {
    /// Priority of ProcessCreate events (exec and fork). Off: not collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_process_create: Option<Priority>,
    /// Priority of ProcessTerminate events. Off: not collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_process_terminate: Option<Priority>,
    /// Priority of DroppedEventsStatistics events. Off: not reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_dropped_events_statistics: Option<Priority>,

    /// Aggregate identical ProcessCreate events (command line + uid + type) into one record with a hit count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_enabled_process_create: Option<bool>,
    /// Time window of one ProcessCreate aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_interval_process_create: Option<IsoDuration>,
    /// Aggregate identical ProcessTerminate events (executable + exit status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_enabled_process_terminate: Option<bool>,
    /// Time window of one ProcessTerminate aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_interval_process_terminate: Option<IsoDuration>,

    /// Records kept per ProcessCreate window; when full the oldest is discarded and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub cache_size_process_create: Option<u32>,
    /// Records kept per ProcessTerminate window.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub cache_size_process_terminate: Option<u32>,
    /// Bytes of a process's argv kept as its command line; longer ones are cut and marked truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 512))]
    pub process_command_line_max_bytes: Option<u32>,

    /// Priority of ConnectionCreate events (network connections). Off: not collected, programs not attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_connection_create: Option<Priority>,
    /// Aggregate identical ConnectionCreate events (same 5-tuple) into one record with a hit count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_enabled_connection_create: Option<bool>,
    /// Time window of one ConnectionCreate aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_interval_connection_create: Option<IsoDuration>,
    /// Records kept per ConnectionCreate window; when full the oldest is discarded and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub cache_size_connection_create: Option<u32>,
    /// Zero the local (ephemeral) port of outbound connections, so repeated calls to one service are one record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_ephemeral_ports_connection_create: Option<bool>,
    /// Addresses whose DNS name is remembered (for host_name); when full the oldest is dropped and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 65536))]
    pub dns_cache_size_connection_create: Option<u32>,
}

pub const CACHE_SIZE_MAX: u32 = 65_536;
pub const CMDLINE_MIN: u32 = 16;
pub const DNS_CACHE_MIN: u32 = 16;
/// Shortest interval accepted: draining runs once a second.
pub const INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Longest interval accepted (seed 000: an aggregated event covers at most 24 hours).
pub const INTERVAL_MAX: Duration = Duration::from_secs(86_400);

/// Settings of one aggregated event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSettings {
    pub priority: Priority,
    pub aggregate: bool,
    pub interval: Duration,
    pub cache_size: u32,
}

/// The validated, complete configuration the agent runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub process_create: EventSettings,
    pub process_terminate: EventSettings,
    pub dropped_stats_priority: Priority,
    pub cmdline_max: u32,
    pub connection_create: EventSettings,
    pub aggregate_ephemeral_ports: bool,
    pub dns_cache_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        let event = |priority| EventSettings {
            priority,
            aggregate: true,
            interval: Duration::from_secs(3600),
            cache_size: 256,
        };
        Config {
            // The micro agent (seed 001) makes Medium the default of the
            // event-based collectors; seed 004 gives ProcessTerminate Low.
            process_create: event(Priority::Medium),
            process_terminate: event(Priority::Low),
            dropped_stats_priority: Priority::Low,
            cmdline_max: 256,
            // Seed 002: network connection events are event-based like
            // ProcessCreate (Medium), 256-record buffer, seed 000: PT1H.
            connection_create: event(Priority::Medium),
            aggregate_ephemeral_ports: false,
            dns_cache_size: 1024,
        }
    }
}

/// One problem with one property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// Every problem found in a configuration object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(f, "invalid configuration in {}: ", self.source_name)?;
        if n != 1 {
            write!(f, "{n} problems: ")?;
        }
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.reason)?;
        }
        Ok(())
    }
}

impl RawConfig {
    /// Parses a configuration object, reporting every bad property.
    pub fn parse(text: &str, source_name: &str) -> Result<RawConfig, ConfigError> {
        let fail = |field: &str, reason: String| ConfigError {
            source_name: source_name.to_string(),
            errors: vec![FieldError { field: field.to_string(), reason }],
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| fail("(document)", format!("not valid JSON: {e}")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(fail("(document)", "must be a JSON object".into()));
        };
        // One property at a time, so that one bad property does not hide the next.
        let mut errors = Vec::new();
        let mut raw = serde_json::Map::new();
        for (k, v) in map {
            let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
            match serde_json::from_value::<RawConfig>(one) {
                Ok(_) => {
                    raw.insert(k, v);
                }
                Err(e) => errors.push(FieldError { field: k, reason: clean_serde_message(&e.to_string()) }),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError { source_name: source_name.to_string(), errors });
        }
        serde_json::from_value(serde_json::Value::Object(raw)).map_err(|e| fail("(document)", e.to_string()))
    }

    /// `other`'s properties replace ours where set.
    pub fn overlay(mut self, other: &RawConfig) -> RawConfig {
        let mut base = serde_json::to_value(&self).expect("config serializes");
        let top = serde_json::to_value(other).expect("config serializes");
        if let (Some(b), Some(t)) = (base.as_object_mut(), top.as_object()) {
            for (k, v) in t {
                b.insert(k.clone(), v.clone());
            }
        }
        self = serde_json::from_value(base).expect("merged config deserializes");
        self
    }

    /// Applies these properties to `base`, checking ranges.
    pub fn resolve(&self, base: &Config, source_name: &str) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut c = base.clone();
        let mut interval = |field: &str, v: Option<IsoDuration>, into: &mut Duration| {
            if let Some(IsoDuration(d)) = v {
                if d < INTERVAL_MIN || d > INTERVAL_MAX {
                    errors.push(FieldError {
                        field: field.into(),
                        reason: format!(
                            "must be between {} and {}, got {}",
                            Iso8601(INTERVAL_MIN),
                            Iso8601(INTERVAL_MAX),
                            Iso8601(d)
                        ),
                    });
                } else {
                    *into = d;
                }
            }
        };
        interval(
            "aggregationIntervalProcessCreate",
            self.aggregation_interval_process_create,
            &mut c.process_create.interval,
        );
        interval(
            "aggregationIntervalProcessTerminate",
            self.aggregation_interval_process_terminate,
            &mut c.process_terminate.interval,
        );
        interval(
            "aggregationIntervalConnectionCreate",
            self.aggregation_interval_connection_create,
            &mut c.connection_create.interval,
        );
        let mut range = |field: &str, v: Option<u32>, min: u32, max: u32, into: &mut u32| {
            if let Some(v) = v {
                if v < min || v > max {
                    errors.push(FieldError {
                        field: field.into(),
                        reason: format!("must be between {min} and {max}, got {v}"),
                    });
                } else {
                    *into = v;
                }
            }
        };
        range(
            "cacheSizeProcessCreate",
            self.cache_size_process_create,
            1,
            CACHE_SIZE_MAX,
            &mut c.process_create.cache_size,
        );
        range(
            "cacheSizeProcessTerminate",
            self.cache_size_process_terminate,
            1,
            CACHE_SIZE_MAX,
            &mut c.process_terminate.cache_size,
        );
        range(
            "processCommandLineMaxBytes",
            self.process_command_line_max_bytes,
            CMDLINE_MIN,
            agent_common::CMDLINE_CAP as u32,
            &mut c.cmdline_max,
        );
        range(
            "cacheSizeConnectionCreate",
            self.cache_size_connection_create,
            1,
            CACHE_SIZE_MAX,
            &mut c.connection_create.cache_size,
        );
        range(
            "dnsCacheSizeConnectionCreate",
            self.dns_cache_size_connection_create,
            DNS_CACHE_MIN,
            CACHE_SIZE_MAX,
            &mut c.dns_cache_size,
        );
        set(&mut c.connection_create.priority, self.event_priority_connection_create);
        set(&mut c.connection_create.aggregate, self.aggregation_enabled_connection_create);
        set(&mut c.aggregate_ephemeral_ports, self.aggregate_ephemeral_ports_connection_create);
        set(&mut c.process_create.priority, self.event_priority_process_create);
        set(&mut c.process_terminate.priority, self.event_priority_process_terminate);
        set(&mut c.dropped_stats_priority, self.event_priority_dropped_events_statistics);
        set(&mut c.process_create.aggregate, self.aggregation_enabled_process_create);
        set(&mut c.process_terminate.aggregate, self.aggregation_enabled_process_terminate);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError { source_name: source_name.to_string(), errors })
        }
    }
}

fn set<T>(into: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *into = v;
    }
}

/// serde's messages end with " at line 1 column N" for the one-property
/// document we built; that position means nothing to the user.
fn clean_serde_message(m: &str) -> String {
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

impl Config {
    /// Every property with its effective value: what `config defaults` prints
    /// and what the agent reports.
    pub fn to_raw(&self) -> RawConfig {
        RawConfig {
            event_priority_process_create: Some(self.process_create.priority),
            event_priority_process_terminate: Some(self.process_terminate.priority),
            event_priority_dropped_events_statistics: Some(self.dropped_stats_priority),
            aggregation_enabled_process_create: Some(self.process_create.aggregate),
            aggregation_interval_process_create: Some(IsoDuration(self.process_create.interval)),
            aggregation_enabled_process_terminate: Some(self.process_terminate.aggregate),
            aggregation_interval_process_terminate: Some(IsoDuration(self.process_terminate.interval)),
            cache_size_process_create: Some(self.process_create.cache_size),
            cache_size_process_terminate: Some(self.process_terminate.cache_size),
            process_command_line_max_bytes: Some(self.cmdline_max),
            event_priority_connection_create: Some(self.connection_create.priority),
            aggregation_enabled_connection_create: Some(self.connection_create.aggregate),
            aggregation_interval_connection_create: Some(IsoDuration(self.connection_create.interval)),
            cache_size_connection_create: Some(self.connection_create.cache_size),
            aggregate_ephemeral_ports_connection_create: Some(self.aggregate_ephemeral_ports),
            dns_cache_size_connection_create: Some(self.dns_cache_size),
        }
    }
}

/// The JSON Schema of the configuration object, generated from [`RawConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawConfig)).expect("schema serializes")
}

/// Names of all properties, from the schema (for docs and tests).
pub fn property_names() -> Vec<String> {
    let s = schema();
    s["properties"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        RawConfig::parse(text, "test")?.resolve(&Config::default(), "test")
    }

    #[test]
    fn empty_object_is_the_defaults() {
        assert_eq!(parse("{}").unwrap(), Config::default());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::default();
        assert_eq!(c.process_create.cache_size, 256);
        assert_eq!(c.process_create.interval, Duration::from_secs(3600));
        assert!(c.process_create.aggregate);
        assert_eq!(c.process_create.priority, Priority::Medium);
        assert_eq!(c.process_terminate.priority, Priority::Low);
        assert_eq!(c.cmdline_max, 256);
    }

    #[test]
    fn values_apply() {
        let c = parse(
            r#"{"aggregationIntervalProcessCreate":"PT2S","cacheSizeProcessCreate":16,
                "aggregationEnabledProcessTerminate":false,"eventPriorityProcessCreate":"Off",
                "processCommandLineMaxBytes":64}"#,
        )
        .unwrap();
        assert_eq!(c.process_create.interval, Duration::from_secs(2));
        assert_eq!(c.process_create.cache_size, 16);
        assert!(!c.process_terminate.aggregate);
        assert_eq!(c.process_create.priority, Priority::Off);
        assert_eq!(c.cmdline_max, 64);
    }

    #[test]
    fn connection_properties_apply_and_are_checked() {
        let c = Config::default();
        assert_eq!(c.connection_create.priority, Priority::Medium);
        assert_eq!((c.connection_create.cache_size, c.connection_create.interval), (256, Duration::from_secs(3600)));
        assert!(c.connection_create.aggregate && !c.aggregate_ephemeral_ports);
        let c = parse(
            r#"{"eventPriorityConnectionCreate":"Off","aggregationEnabledConnectionCreate":false,
                "aggregationIntervalConnectionCreate":"PT5S","cacheSizeConnectionCreate":32,
                "aggregateEphemeralPortsConnectionCreate":true,"dnsCacheSizeConnectionCreate":64}"#,
        )
        .unwrap();
        assert_eq!(c.connection_create.priority, Priority::Off);
        assert!(!c.connection_create.aggregate && c.aggregate_ephemeral_ports);
        assert_eq!((c.connection_create.cache_size, c.dns_cache_size), (32, 64));
        assert_eq!(c.connection_create.interval, Duration::from_secs(5));
        let e = parse(
            r#"{"cacheSizeConnectionCreate":0,"dnsCacheSizeConnectionCreate":1,"aggregationIntervalConnectionCreate":"P2D",
                "aggregateEphemeralPortsConnectionCreate":"yes"}"#,
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 1, "type errors first: {e}");
        assert_eq!(e.errors[0].field, "aggregateEphemeralPortsConnectionCreate");
        let e = parse(
            r#"{"cacheSizeConnectionCreate":0,"dnsCacheSizeConnectionCreate":1,"aggregationIntervalConnectionCreate":"P2D"}"#,
        )
        .unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["aggregationIntervalConnectionCreate", "cacheSizeConnectionCreate", "dnsCacheSizeConnectionCreate"]
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let e =
            parse(r#"{"cacheSizeProcessCreate":"big","bogus":1,"aggregationIntervalProcessCreate":"1H"}"#).unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["aggregationIntervalProcessCreate", "bogus", "cacheSizeProcessCreate"]);
        let text = e.to_string();
        assert!(text.contains("unknown field `bogus`"), "{text}");
        assert!(text.contains("must start with P"), "{text}");
        assert!(text.contains("invalid type: string \"big\""), "{text}");
    }

    #[test]
    fn ranges_are_checked_and_named() {
        let e = parse(r#"{"cacheSizeProcessCreate":0,"processCommandLineMaxBytes":4096,"aggregationIntervalProcessTerminate":"PT0.5S"}"#)
            .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.errors.len(), 3, "{text}");
        assert!(text.contains("cacheSizeProcessCreate: must be between 1 and 65536, got 0"), "{text}");
        assert!(text.contains("processCommandLineMaxBytes: must be between 16 and 512, got 4096"), "{text}");
        assert!(text.contains("aggregationIntervalProcessTerminate: must be between PT1S and P1D"), "{text}");
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in ["", "[]", "{", "3", r#"{"a":}"#] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.errors[0].field, "(document)", "{bad}");
        }
    }

    #[test]
    fn to_raw_round_trips() {
        let c = parse(r#"{"cacheSizeProcessTerminate":9,"aggregationIntervalProcessTerminate":"PT90S"}"#).unwrap();
        let text = serde_json::to_string(&c.to_raw()).unwrap();
        assert_eq!(parse(&text).unwrap(), c);
        // Every property is reported.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), property_names().len());
    }

    #[test]
    fn overlay_prefers_the_top() {
        let base = RawConfig::parse(r#"{"cacheSizeProcessCreate":5,"cacheSizeProcessTerminate":6}"#, "a").unwrap();
        let top = RawConfig::parse(r#"{"cacheSizeProcessCreate":7}"#, "b").unwrap();
        let m = base.overlay(&top);
        assert_eq!(m.cache_size_process_create, Some(7));
        assert_eq!(m.cache_size_process_terminate, Some(6));
    }

    #[test]
    fn schema_lists_every_property_and_closes_the_object() {
        let s = schema();
        assert_eq!(s["additionalProperties"], serde_json::json!(false));
        let names = property_names();
        for n in ["eventPriorityProcessCreate", "aggregationIntervalProcessCreate", "cacheSizeProcessCreate"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from schema");
        }
    }
}
