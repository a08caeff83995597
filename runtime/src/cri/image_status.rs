use std::collections::HashMap;

use cri_api::v1 as cri;
use tonic::Status;

use super::{CriService, image};
use crate::image::ImageError;

/// An absent image is not an error: the response has no image.
pub fn handle(
    svc: &CriService,
    req: cri::ImageStatusRequest,
) -> Result<cri::ImageStatusResponse, Status> {
    let wanted = image::spec_image(req.image.as_ref());
    let found = if req.verbose {
        svc.images.inspect(wanted)
    } else {
        svc.images
            .resolve(wanted)
            .map(|i| (i, serde_json::Value::Null))
    };
    match found {
        Ok((i, info)) => Ok(cri::ImageStatusResponse {
            image: Some(image::image(&i)),
            info: if req.verbose {
                HashMap::from([("info".to_owned(), info.to_string())])
            } else {
                HashMap::new()
            },
        }),
        Err(ImageError::NotFound { .. }) => Ok(cri::ImageStatusResponse::default()),
        Err(e) => Err(e.into()),
    }
}
