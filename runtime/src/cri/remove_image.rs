use cri_api::v1 as cri;
use tonic::Status;

use super::{CriService, image};
use crate::image::ImageError;

/// Idempotent: an image that is not there is removed already.
pub async fn handle(
    svc: &CriService,
    req: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse, Status> {
    let wanted = image::spec_image(req.image.as_ref()).to_owned();
    let svc = svc.clone();
    let removed =
        tokio::task::spawn_blocking(move || svc.images.remove(&wanted, &|id| svc.image_in_use(id)))
            .await
            .map_err(|e| Status::internal(format!("RemoveImage task failed: {e}")))?;
    match removed {
        Ok(()) | Err(ImageError::NotFound { .. }) => Ok(cri::RemoveImageResponse {}),
        Err(e) => Err(e.into()),
    }
}
