//! Structured logging, and OpenTelemetry traces when the standard `OTEL_*` variables ask for
//! them. Fields logged by drfleet are ids, codes and counts; tenant rows, tokens and
//! connection strings are never passed to a log macro (nor, so, to a span).
//!
//! Traces are exported over OTLP/HTTP (protobuf) by a batch processor. They are off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; off means no
//! layer in the subscriber and no exporter thread, so no cost. How a trace crosses processes:
//! [`crate::trace_context`].

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer, filter, fmt, prelude::*};

use crate::config::{ConfigError, LogFormat};

static LAPIN_MUTED: AtomicBool = AtomicBool::new(false);

/// Mute (or unmute) lapin's own log lines. The start-up broker check mutes them while it
/// runs: it reports a failure itself, as the one line a permanent start-up error gets, and
/// lapin would add its own ERROR line about the refused connection.
pub fn mute_lapin(muted: bool) {
    LAPIN_MUTED.store(muted, Ordering::Relaxed);
}

/// Where and as whom traces are exported; read from the standard variables by
/// [`OtelConfig::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// Full URL spans are POSTed to (`…/v1/traces`).
    pub traces_endpoint: String,
    /// `service.name` of every span; `OTEL_SERVICE_NAME`, else the program's name.
    pub service_name: String,
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL` values this build exports with.
const HTTP_PROTOBUF: &str = "http/protobuf";

impl OtelConfig {
    /// The process environment's settings: `None` when tracing is off (no endpoint set,
    /// `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`). A setting this build cannot
    /// honour is a configuration error (exit 2), not silently ignored.
    pub fn from_env(program: &str) -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(program, |k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any lookup (tests).
    pub fn from_lookup(
        program: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(_) => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_EXPORTER",
                    "must be otlp or none (the only exporter of this build is OTLP)",
                ));
            }
        }
        let (setting, endpoint) = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            // The per-signal URL is used as given; the base URL gets the signal's path.
            (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
            (None, Some(base)) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            ),
            (None, None) => return Ok(None),
        };
        let valid = (endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            && !endpoint.contains(char::is_whitespace);
        if !valid {
            return Err(ConfigError::new(
                setting,
                "must be an http:// or https:// URL (e.g. http://127.0.0.1:4318)",
            ));
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = get(var)
                && p != HTTP_PROTOBUF
            {
                return Err(ConfigError::new(
                    // Both names are static; pick the one that was set.
                    if var.contains("TRACES") {
                        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
                    } else {
                        "OTEL_EXPORTER_OTLP_PROTOCOL"
                    },
                    "must be http/protobuf (this build exports OTLP over HTTP; use port 4318)",
                ));
            }
        }
        Ok(Some(Self {
            traces_endpoint: endpoint,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| program.to_string()),
        }))
    }
}

/// Whether this process exports spans ([`start`] installed an OTLP exporter). Code that
/// would open spans only to carry a context checks this first.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// What [`start`] installed. Keep it until the process ends and call [`Telemetry::shutdown`]
/// last, so the spans still buffered are exported.
#[must_use = "call shutdown() at exit so buffered spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The provider of this process, once installed (the subscriber is global, so is it).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

impl Telemetry {
    /// Whether spans are exported (an OTLP layer and its exporter thread exist).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Export what is buffered now (tests; a long-lived process exports on its own).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }

    /// Export what is buffered and stop the exporter thread (bounded: 5 s). Blocking.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("telemetry: spans may be lost at exit: {e}");
        }
    }
}

/// How the subscriber logs.
#[derive(Debug, Clone, Copy)]
pub enum Logs {
    Format(LogFormat),
    /// No log output (drctl: its stdout and stderr are its interface); traces only.
    Off,
}

/// Install the global subscriber (once; later calls install nothing and return a handle to
/// the first call's exporter, if any). `RUST_LOG` overrides the default `info` filter, which spans
/// pass too. With `otel` set, spans are exported over OTLP; the exporter is built here, so a
/// bad endpoint is reported as a configuration error.
pub fn start(logs: Logs, otel: Option<&OtelConfig>) -> Result<Telemetry, ConfigError> {
    if let Some(p) = PROVIDER.get() {
        return Ok(Telemetry {
            provider: Some(p.clone()),
        });
    }
    if matches!(logs, Logs::Off) && otel.is_none() {
        // Nothing to log, nothing to export: no subscriber at all.
        return Ok(Telemetry { provider: None });
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,sqlx=warn"));
    // Evaluated per event (not cached per call site), so muting takes effect at once.
    let unmuted = filter::dynamic_filter_fn(|meta, _| {
        !(LAPIN_MUTED.load(Ordering::Relaxed) && meta.target().starts_with("lapin"))
    });
    let provider = otel.map(build_provider).transpose()?;
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("drfleet")));
    let log_layer = match logs {
        Logs::Off => None,
        Logs::Format(LogFormat::Json) => Some(
            fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(unmuted)
                .boxed(),
        ),
        Logs::Format(LogFormat::Text) => Some(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(unmuted)
                .boxed(),
        ),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(log_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    match provider {
        Some(p) if installed => {
            let _ = PROVIDER.set(p.clone());
            Ok(Telemetry { provider: Some(p) })
        }
        // Another subscriber was installed first (a test harness): export nothing.
        Some(p) => {
            let _ = p.shutdown();
            Ok(Telemetry { provider: None })
        }
        None => Ok(Telemetry { provider: None }),
    }
}

/// Logs only, no traces (tests).
pub fn init(format: LogFormat) {
    let _ = start(Logs::Format(format), None);
}

fn build_provider(otel: &OtelConfig) -> Result<SdkTracerProvider, ConfigError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(otel.traces_endpoint.clone())
        .build()
        .map_err(|_| {
            ConfigError::new(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "could not build the OTLP exporter for this URL",
            )
        })?;
    let resource = Resource::builder()
        .with_service_name(otel.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<OtelConfig>, ConfigError> {
        OtelConfig::from_lookup("drfleet-worker", |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_set() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None
        );
        assert_eq!(config(&[("OTEL_SERVICE_NAME", "x")]).unwrap(), None);
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(config(&[ep, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(), None);
        assert_eq!(
            config(&[ep, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn endpoints_and_service_name_follow_the_specification() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.traces_endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.service_name, "drfleet-worker");
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t:443/custom"),
            ("OTEL_SERVICE_NAME", "backup-1"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.traces_endpoint, "https://t:443/custom");
        assert_eq!(c.service_name, "backup-1");
    }

    #[test]
    fn settings_this_build_cannot_honour_are_errors_naming_the_variable() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for (vars, setting) in [
            (
                vec![ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![ep, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ),
            (
                vec![ep, ("OTEL_TRACES_EXPORTER", "jaeger")],
                "OTEL_TRACES_EXPORTER",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c :4318")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
        ] {
            let e = config(&vars).unwrap_err();
            assert_eq!(e.setting, setting, "{vars:?}");
        }
    }
}
