use cri_api::v1 as cri;
use tonic::Status;

use super::{CriService, image};
use crate::image::{Credentials, ImageError};

pub async fn handle(
    svc: &CriService,
    req: cri::PullImageRequest,
) -> Result<cri::PullImageResponse, Status> {
    let wanted = image::spec_image(req.image.as_ref());
    let creds = match &req.auth {
        None => None,
        Some(a) => Credentials::from_auth_config(
            &a.username,
            &a.password,
            &a.auth,
            &a.identity_token,
            &a.registry_token,
        )
        .map_err(|reason| ImageError::BadCredentials { reason })?,
    };
    let pulled = svc.images.pull(wanted, creds.as_ref()).await?;
    Ok(cri::PullImageResponse {
        image_ref: pulled.id,
    })
}
