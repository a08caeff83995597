//! The peapod.net.v1 Services gRPC service: converts, calls the [`ServiceTable`], converts
//! back. The one place Service errors become gRPC codes.

use std::sync::Arc;

use peapod_proto::net::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{check_label, endpoints_from, service_from, service_to};
use super::{ServiceError, ServiceTable};
use crate::errors::chain;

#[derive(Clone)]
pub struct ServicesApi {
    pub table: Arc<ServiceTable>,
    /// The Kubernetes watch owns the Services: the RPCs that change them are refused.
    pub managed: bool,
}

impl ServicesApi {
    fn writable(&self) -> Result<(), ServiceError> {
        if self.managed {
            Err(ServiceError::Managed)
        } else {
            Ok(())
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let message = chain(&e);
        match e {
            ServiceError::Invalid { .. } => Status::invalid_argument(message),
            ServiceError::NotFound { .. } => Status::not_found(message),
            ServiceError::Exists { .. } | ServiceError::Claimed { .. } => {
                Status::already_exists(message)
            }
            ServiceError::Managed => Status::failed_precondition(message),
            ServiceError::Net(netsetup::NetError::Firewall(
                netsetup::firewall::FirewallError::NoServices,
            )) => Status::failed_precondition(message),
            ServiceError::Net(_) | ServiceError::Store(_) => Status::internal(message),
        }
    }
}

fn names(namespace: &str, name: &str) -> Result<(), ServiceError> {
    check_label("namespace", namespace)?;
    check_label("name", name)
}

#[tonic::async_trait]
impl pb::services_server::Services for ServicesApi {
    #[tracing::instrument(skip_all)]
    async fn add_service(
        &self,
        req: Request<pb::AddServiceRequest>,
    ) -> Result<Response<pb::AddServiceResponse>, Status> {
        self.writable()?;
        let req = req.into_inner();
        let service = req
            .service
            .ok_or_else(|| Status::invalid_argument("service is required"))?;
        let service = service_from(service)?;
        tracing::info!(namespace = %service.namespace, name = %service.name, replace = req.replace, "AddService");
        let service = self.table.add(service, req.replace).await?;
        Ok(Response::new(pb::AddServiceResponse {
            service: Some(service_to(&service)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn remove_service(
        &self,
        req: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        self.writable()?;
        let req = req.into_inner();
        names(&req.namespace, &req.name)?;
        tracing::info!(namespace = %req.namespace, name = %req.name, "RemoveService");
        self.table.remove(&req.namespace, &req.name).await?;
        Ok(Response::new(pb::RemoveServiceResponse {}))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        let req = req.into_inner();
        names(&req.namespace, &req.name)?;
        let service = self.table.get(&req.namespace, &req.name).await?;
        Ok(Response::new(pb::GetServiceResponse {
            service: Some(service_to(&service)),
        }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let req = req.into_inner();
        let namespace = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
        let services = self.table.list(namespace).await;
        Ok(Response::new(pb::ListServicesResponse {
            services: services.iter().map(service_to).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn set_endpoints(
        &self,
        req: Request<pb::SetEndpointsRequest>,
    ) -> Result<Response<pb::SetEndpointsResponse>, Status> {
        self.writable()?;
        let req = req.into_inner();
        names(&req.namespace, &req.name)?;
        tracing::info!(namespace = %req.namespace, name = %req.name, endpoints = req.endpoints.len(), "SetEndpoints");
        let endpoints = req.endpoints;
        let service = self
            .table
            .set_endpoints(&req.namespace, &req.name, |s| endpoints_from(s, endpoints))
            .await?;
        Ok(Response::new(pb::SetEndpointsResponse {
            service: Some(service_to(&service)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn apply_services(
        &self,
        req: Request<pb::ApplyServicesRequest>,
    ) -> Result<Response<pb::ApplyServicesResponse>, Status> {
        self.writable()?;
        let req = req.into_inner();
        let mut wanted = Vec::with_capacity(req.services.len());
        for (i, s) in req.services.into_iter().enumerate() {
            let endpoints = s.endpoints.clone();
            let at = |e: ServiceError| match e {
                ServiceError::Invalid { field, reason } => ServiceError::Invalid {
                    field: format!("services[{i}].{field}"),
                    reason,
                },
                other => other,
            };
            let mut service = service_from(s).map_err(at)?;
            service.endpoints = endpoints_from(&service, endpoints).map_err(at)?;
            wanted.push(service);
        }
        tracing::info!(services = wanted.len(), prune = req.prune, "ApplyServices");
        let done = self.table.apply_many(wanted, req.prune).await?;
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Response::new(pb::ApplyServicesResponse {
            created: n(done.created),
            updated: n(done.updated),
            unchanged: n(done.unchanged),
            removed: n(done.removed),
        }))
    }
}
