//! The export half: a gate in front of the SDK's batch processor that counts
//! what a full queue drops, an exporter that counts what a failed batch drops,
//! and the HTTP client the OTLP exporter sends with (our hyper client, driven
//! on the runtime although the batch processor calls it from its own thread).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;

use super::TelemetryError;
use crate::config;

/// Spans held for export at most; beyond it they are dropped and counted.
pub(super) const QUEUE: usize = 4096;
/// Spans per OTLP request.
const BATCH: usize = 512;
/// How long an ended span may wait for a batch to fill.
const DELAY: Duration = Duration::from_secs(1);
/// A collector's answer is read up to this size (it is only a status).
const MAX_ANSWER: usize = 64 << 10;

/// The processor the provider gets: the gate, then the SDK's batch processor.
pub(super) fn processor(
    config: &config::Telemetry,
    runtime: tokio::runtime::Handle,
    dropped: Counter,
) -> Result<Gate, TelemetryError> {
    // Each attempt and the retries between them share the export timeout, so
    // a batch is given up within it (the exporter's retry deadline does not
    // cut an attempt short).
    let attempt = config.export_timeout / 2;
    let headers: HashMap<String, String> = config
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Hyper::new(runtime, attempt))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.traces_url.to_string())
        .with_timeout(attempt)
        .with_headers(headers)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let queued = Arc::new(Queued {
        spans: AtomicUsize::new(0),
        dropped,
        failing: AtomicBool::new(false),
        url: config.traces_url.to_string(),
    });
    let batch = BatchSpanProcessor::builder(Counting {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_max_export_batch_size(BATCH)
            .with_scheduled_delay(DELAY)
            .build(),
    )
    .build();
    Ok(Gate {
        inner: batch,
        queued,
    })
}

/// Spans between `on_end` and the end of their batch's export.
#[derive(Debug)]
struct Queued {
    spans: AtomicUsize,
    dropped: Counter,
    /// Logged once when exports start failing, once when they recover.
    failing: AtomicBool,
    url: String,
}

/// Admits an ended span only while fewer than [`QUEUE`] are held, so the
/// batch processor's own queue (as large) never overflows uncounted.
#[derive(Debug)]
pub(super) struct Gate {
    inner: BatchSpanProcessor,
    queued: Arc<Queued>,
}

impl SpanProcessor for Gate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.spans.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            self.queued.spans.fetch_sub(1, Ordering::Relaxed);
            self.queued.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting the spans of every batch it gave up on.
#[derive(Debug)]
struct Counting {
    inner: opentelemetry_otlp::SpanExporter,
    queued: Arc<Queued>,
}

impl SpanExporter for Counting {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.spans.fetch_sub(n, Ordering::Relaxed);
        let q = &self.queued;
        match &result {
            Ok(()) => {
                if q.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %q.url, "span export works again");
                }
            }
            Err(e) => {
                q.dropped.inc_by(n as u64);
                if !q.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(url = %q.url, spans = n, "span export failed, dropping the batch: {e}");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// hyper-util's client, run on the gateway's runtime: the batch processor
/// calls the exporter from a thread of its own, outside any runtime.
#[derive(Debug, Clone)]
struct Hyper {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl Hyper {
    fn new(runtime: tokio::runtime::Handle, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(None, "telemetry.otlp_endpoint"))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Building the pool registers its idle timer with the runtime.
        let _guard = runtime.enter();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Self {
            client,
            runtime,
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for Hyper {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let task = self.runtime.spawn(async move {
            let exchange = async {
                let res = client.request(request.map(Full::new)).await?;
                let (parts, body) = res.into_parts();
                let body = Limited::new(body, MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| -> HttpError { e })?
                    .to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(format!("the collector did not answer within {timeout:?}").into()),
            }
        });
        task.await?
    }
}
