//! Active health checks: one task per endpoint, off the request path.

use std::sync::Arc;

use http::Request;

use super::{upstream_uri, ProxyBody, Upstream};

impl Upstream {
    /// One task per endpoint, off the request path; they hold the upstream
    /// weakly and stop when it is dropped (a reload that changed the backend).
    pub(super) fn spawn_checks(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(check) = self.backend.health.clone() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        for i in 0..self.backend.endpoints.len() {
            let (weak, stop, check) = (Arc::downgrade(self), stop.clone(), check.clone());
            tokio::spawn(async move {
                let (mut passes, mut fails) = (0u32, 0u32);
                loop {
                    let Some(up) = weak.upgrade() else { return };
                    let ok = tokio::select! {
                        _ = stop.cancelled() => return,
                        ok = up.check(i, &check) => ok,
                    };
                    if ok {
                        (passes, fails) = (passes + 1, 0);
                        if passes >= check.healthy_threshold {
                            up.pool.set_checks_pass(i, true);
                        }
                    } else {
                        (passes, fails) = (0, fails + 1);
                        if fails >= check.unhealthy_threshold {
                            up.pool.set_checks_pass(i, false);
                        }
                    }
                    drop(up);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(check.interval) => {}
                    }
                }
            });
        }
    }

    async fn check(&self, i: usize, check: &crate::config::HealthCheck) -> bool {
        let ep = &self.backend.endpoints[i];
        let Ok(uri) = upstream_uri(ep, &check.path, None, None) else {
            return false;
        };
        let mut req = Request::new(ProxyBody::empty());
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert(http::header::HOST, ep.host.clone());
        matches!(
            tokio::time::timeout(check.timeout, self.client.request(req)).await,
            Ok(Ok(res)) if res.status().is_success()
        )
    }
}
