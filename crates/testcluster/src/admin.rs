//! The loopback admin endpoint `keep-testcluster fault` talks to: `POST /faults` with
//! `{"service": NAME, "spec": FaultSpec}`, SystemRootToken required.

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use crate::Registry;
use crate::config::Config;
use crate::faults::FaultSpec;
use crate::server::{Body, Handler, text};

/// The body of `POST /faults`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FaultRequest {
    pub(crate) service: String,
    pub(crate) spec: FaultSpec,
}

pub(crate) fn handler(reg: Arc<Registry>, cfg: Arc<Config>) -> Handler {
    Arc::new(move |req| {
        let reg = Arc::clone(&reg);
        let cfg = Arc::clone(&cfg);
        Box::pin(async move {
            if crate::auth::bearer(req.headers()).as_deref() != Some(cfg.system_root_token.as_str())
            {
                return text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            }
            if req.method() != Method::POST || req.uri().path() != "/faults" {
                return text(StatusCode::NOT_FOUND, "not found\n");
            }
            let Ok(body) = req.into_body().collect().await else {
                return text(StatusCode::BAD_REQUEST, "bad body\n");
            };
            let fr: FaultRequest = match serde_json::from_slice(&body.to_bytes()) {
                Ok(f) => f,
                Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            };
            apply(&reg, &fr).await
        })
    })
}

async fn apply(reg: &Registry, fr: &FaultRequest) -> Response<Body> {
    let Some(svc) = reg.find(&fr.service) else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("no service {:?}\n", fr.service),
        );
    };
    if let Err(e) = svc.faults.apply(&fr.spec) {
        return text(StatusCode::BAD_REQUEST, &format!("{e:#}\n"));
    }
    if fr.spec.stop {
        svc.stop().await;
    }
    if fr.spec.start {
        if let Err(e) = svc.start().await {
            return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}\n"));
        }
    }
    text(StatusCode::OK, "ok\n")
}
