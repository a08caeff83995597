use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

/// The image store's use of its filesystem: bytes and inodes under its directory.
pub async fn handle(
    svc: &CriService,
    _req: cri::ImageFsInfoRequest,
) -> Result<cri::ImageFsInfoResponse, Status> {
    let images = svc.images.clone();
    let usage = tokio::task::spawn_blocking(move || images.usage())
        .await
        .map_err(|e| Status::internal(format!("ImageFsInfo task failed: {e}")))??;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1);
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: svc.images.root().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes_used,
            }),
        }],
        container_filesystems: Vec::new(),
    })
}
