//! The router's custom resource definitions (`OnlineEndpoint`, `OnlineDeployment`), from the
//! router crate itself: `scoregate::crd::crds()` builds them with `kube::CustomResourceExt::crd()`
//! and adds the validation rules OpenAPI can express, the same definitions as `deploy/crds/`.
//! Here they only gain the installer's labels.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::meta;

/// The CRDs to install, each labelled as part of `extension`.
pub fn crds(extension: &str) -> Vec<CustomResourceDefinition> {
    scoregate::crd::crds()
        .into_iter()
        .map(|mut crd| {
            crd.metadata
                .labels
                .get_or_insert_with(Default::default)
                .extend(meta::labels(extension, "crd"));
            crd
        })
        .collect()
}
