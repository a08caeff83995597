use cri_api::v1 as cri;
use tonic::Status;

use super::{CriService, image};
use crate::image::ImageError;

pub fn handle(
    svc: &CriService,
    req: cri::ListImagesRequest,
) -> Result<cri::ListImagesResponse, Status> {
    let wanted = req.filter.as_ref().and_then(|f| f.image.as_ref());
    let wanted = image::spec_image(wanted);
    let images = if wanted.is_empty() {
        svc.images.list()?.iter().map(image::image).collect()
    } else {
        match svc.images.resolve(wanted) {
            Ok(i) => vec![image::image(&i)],
            Err(ImageError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        }
    };
    Ok(cri::ListImagesResponse { images })
}
