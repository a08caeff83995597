//! CRIListStreaming (KEP 5825): `StreamPodSandboxes`, `StreamContainers`,
//! `StreamContainerStats`, `StreamPodSandboxStats` and `StreamImages` answer what their List
//! RPC answers, in messages of at most [`CHUNK`] items each (every item once, none for an
//! empty list), then EOF: the kubelet collects the whole stream.

use std::pin::Pin;

use tonic::Status;

/// Items per message: far below gRPC's 4 MiB default for the largest items (stats).
pub const CHUNK: usize = 100;

pub type Items<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// `items` as messages made by `wrap`, at most [`CHUNK`] items each.
pub fn chunked<I, T>(items: Vec<I>, wrap: fn(Vec<I>) -> T) -> Items<T>
where
    I: Send + 'static,
    T: Send + 'static,
{
    let mut messages = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        messages.push(Ok(wrap(items.by_ref().take(CHUNK).collect())));
    }
    Box::pin(tokio_stream::iter(messages))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[test]
    fn every_item_once_in_order_at_most_chunk_per_message() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for n in [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let items: Vec<usize> = (0..n).collect();
            let msgs: Vec<Vec<usize>> = rt.block_on(
                chunked(items, |v| v)
                    .map(Result::unwrap)
                    .collect::<Vec<_>>(),
            );
            assert!(
                msgs.iter().all(|m| !m.is_empty() && m.len() <= CHUNK),
                "{n}"
            );
            assert_eq!(msgs.concat(), (0..n).collect::<Vec<_>>(), "{n}");
        }
    }
}
