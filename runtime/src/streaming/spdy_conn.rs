//! A SPDY/3.1 connection over any tokio byte stream: streams opened by either side,
//! each an `AsyncRead + AsyncWrite`, with flow control and bounded buffering.
//!
//! Two tasks serve a connection: a *reader* that decodes frames and files data into the
//! streams' receive buffers, and a *writer* that encodes the queued frames in order (the
//! header compressor is stateful, so one task owns it). Streams, the reader and the
//! writer share one small state behind a mutex.
//!
//! # Flow control and memory bounds
//!
//! Kubernetes' own SPDY code (moby/spdystream) says `SPDY/3.1` but does no flow control:
//! it never sends WINDOW_UPDATE and ignores ours. A peer that has sent neither SETTINGS
//! nor WINDOW_UPDATE is therefore treated as such a peer: we do not wait for window
//! credit it will never give, and we keep its data bounded the way spdystream itself
//! does, by no longer reading the connection while the target stream's buffer is full
//! ([`STREAM_WINDOW`] per stream, [`SESSION_WINDOW`] over all streams). Once the peer
//! has shown flow control (any SETTINGS or WINDOW_UPDATE), windows are honoured both
//! ways: we send no more than it granted, and data beyond the windows we granted
//! ([`STREAM_WINDOW`] via SETTINGS, [`SESSION_WINDOW`] via a session WINDOW_UPDATE) is
//! refused: RST_STREAM FLOW_CONTROL_ERROR for a stream, GOAWAY for the session.
//! Outgoing data waits while [`WRITE_QUEUE_LIMIT`] bytes are queued for the writer, so a
//! peer that does not read blocks our writers instead of growing memory.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::AbortHandle;

pub use super::spdy::Headers;
use super::spdy::{self, Decoder, Encoder, Frame, FrameError};

/// The receive window we grant every stream.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// The receive window we grant the whole session.
pub const SESSION_WINDOW: u32 = 16 << 20;
/// The most data bytes queued for the writer before stream writes wait.
pub const WRITE_QUEUE_LIMIT: usize = 1 << 20;
/// The most streams the peer may have open at once; more are refused.
pub const MAX_PEER_STREAMS: usize = 128;
/// The largest data frame we send.
const MAX_DATA_FRAME: usize = 64 << 10;
/// Control frames (ping answers, window updates) queued before we stop reading.
const MAX_CONTROL_BACKLOG: usize = 256;
const READ_CHUNK: usize = 64 << 10;
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// Why a connection or stream operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed")]
    Closed,
    #[error("peer sent GOAWAY: no new streams")]
    GoneAway,
    #[error("stream ids exhausted")]
    IdsExhausted,
    #[error("stream {stream_id} reset by the peer with status {status}")]
    Reset { stream_id: u32, status: u32 },
    #[error("stream {stream_id} was reset locally")]
    LocalReset { stream_id: u32 },
    #[error("peer sent an invalid frame")]
    Protocol(#[source] Arc<FrameError>),
    #[error("peer sent more data than the session window allows")]
    SessionWindowExceeded,
    #[error("peer grew the session send window beyond 2^31-1")]
    WindowOverflow,
    #[error("connection i/o failed")]
    Io(#[source] Arc<io::Error>),
}

impl ConnError {
    fn to_io(&self) -> io::Error {
        let kind = match self {
            ConnError::Reset { .. } => io::ErrorKind::ConnectionReset,
            ConnError::LocalReset { .. } => io::ErrorKind::NotConnected,
            _ => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, self.clone())
    }
}

struct Shared {
    state: Mutex<State>,
    /// Frames were queued, or the writer should finish.
    writer_wake: Notify,
    /// Receive buffer space or control backlog was freed, or the connection ended.
    reader_wake: Notify,
    closed: watch::Sender<Option<Result<(), ConnError>>>,
}

struct State {
    is_client: bool,
    streams: HashMap<u32, StreamState>,
    next_id: u32,
    next_ping: u32,
    pings: HashMap<u32, (Instant, oneshot::Sender<Duration>)>,
    /// The highest stream id the peer opened.
    last_peer_id: u32,
    peer_streams: usize,
    out: VecDeque<Frame>,
    queued_data: usize,
    control_backlog: usize,
    /// The peer has sent SETTINGS or WINDOW_UPDATE: windows are enforced.
    peer_fc: bool,
    peer_initial_window: i64,
    session_send: i64,
    session_recv: i64,
    session_unacked: usize,
    session_buffered: usize,
    incoming: Option<mpsc::UnboundedSender<SpdyStream>>,
    goaway_received: bool,
    /// Set once: the connection is over for its users.
    ended: Option<Result<(), ConnError>>,
    /// The writer exits once the queue is empty.
    closing: bool,
    tasks: Vec<AbortHandle>,
}

struct StreamState {
    recv: VecDeque<Vec<u8>>,
    recv_offset: usize,
    buffered: usize,
    recv_fin: bool,
    local_fin: bool,
    reset: Option<ConnError>,
    send_window: i64,
    recv_window: i64,
    unacked: usize,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    reply: Option<oneshot::Sender<Result<(), ConnError>>>,
}

impl StreamState {
    fn new(send_window: i64) -> Self {
        StreamState {
            recv: VecDeque::new(),
            recv_offset: 0,
            buffered: 0,
            recv_fin: false,
            local_fin: false,
            reset: None,
            send_window,
            recv_window: STREAM_WINDOW as i64,
            unacked: 0,
            read_waker: None,
            write_waker: None,
            reply: None,
        }
    }

    fn wake(&mut self) {
        wake(&mut self.read_waker);
        wake(&mut self.write_waker);
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

impl State {
    fn queue(&mut self, frame: Frame) {
        match &frame {
            Frame::Data { data, .. } => self.queued_data += data.len(),
            _ => self.control_backlog += 1,
        }
        self.out.push_back(frame);
    }

    fn rst(&mut self, stream_id: u32, status: u32) {
        self.queue(Frame::RstStream { stream_id, status });
    }

    /// Returns `n` bytes of session window to the peer (in batches).
    fn credit_session(&mut self, n: usize) {
        self.session_unacked += n;
        if self.session_unacked >= SESSION_WINDOW as usize / 2 {
            let delta = std::mem::take(&mut self.session_unacked);
            self.session_recv += delta as i64;
            self.queue(Frame::WindowUpdate {
                stream_id: 0,
                delta: delta as u32,
            });
        }
    }

    fn is_peer_id(&self, id: u32) -> bool {
        // Clients open odd ids, servers even ones.
        (id % 2 == 1) != self.is_client
    }

    fn wake_writers(&mut self) {
        for s in self.streams.values_mut() {
            wake(&mut s.write_waker);
        }
    }

    /// Ends the connection for its users: streams fail (after their buffered data),
    /// `accept` ends, waiters are told. The writer still drains its queue.
    fn end(&mut self, result: Result<(), ConnError>) -> bool {
        if self.ended.is_some() {
            return false;
        }
        self.ended = Some(result);
        self.closing = true;
        self.incoming = None;
        self.pings.clear();
        for s in self.streams.values_mut() {
            if let Some(tx) = s.reply.take() {
                let _ = tx.send(Err(ConnError::Closed));
            }
            s.wake();
        }
        true
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the connection (see [`State::end`]) and tells everyone who waits.
    fn end(&self, result: Result<(), ConnError>, goaway: Option<u32>) {
        let mut st = self.lock();
        if let Some(status) = goaway
            && st.ended.is_none()
        {
            let last = st.last_peer_id;
            st.queue(Frame::GoAway {
                last_good_stream_id: last,
                status,
            });
        }
        if st.end(result.clone()) {
            let _ = self.closed.send(Some(result));
        }
        drop(st);
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
    }

    fn abort_tasks(&self) {
        for task in self.lock().tasks.drain(..) {
            task.abort();
        }
    }
}

/// One SPDY connection. Dropping it (or [`SpdyConn::close`]) ends the connection and
/// every stream on it.
pub struct SpdyConn {
    shared: Arc<Shared>,
}

/// The streams the peer opens, in order.
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<SpdyStream>,
}

impl Incoming {
    /// The next stream the peer opened (already answered with SYN_REPLY), or `None`
    /// once the connection has ended.
    pub async fn accept(&mut self) -> Option<SpdyStream> {
        self.rx.recv().await
    }
}

impl SpdyConn {
    /// The server side of a connection (it opens even stream ids).
    pub fn server<T>(io: T) -> (SpdyConn, Incoming)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, false)
    }

    /// The client side of a connection (it opens odd stream ids).
    pub fn client<T>(io: T) -> (SpdyConn, Incoming)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, true)
    }

    fn start<T>(io: T, is_client: bool) -> (SpdyConn, Incoming)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = State {
            is_client,
            streams: HashMap::new(),
            next_id: if is_client { 1 } else { 2 },
            next_ping: if is_client { 1 } else { 2 },
            pings: HashMap::new(),
            last_peer_id: 0,
            peer_streams: 0,
            out: VecDeque::new(),
            queued_data: 0,
            control_backlog: 0,
            peer_fc: false,
            peer_initial_window: spdy::INITIAL_WINDOW as i64,
            session_send: spdy::INITIAL_WINDOW as i64,
            session_recv: SESSION_WINDOW as i64,
            session_unacked: 0,
            session_buffered: 0,
            incoming: Some(tx),
            goaway_received: false,
            ended: None,
            closing: false,
            tasks: Vec::new(),
        };
        // Our windows: per stream through SETTINGS, the session's through an update.
        state.queue(Frame::Settings {
            clear: false,
            entries: vec![spdy::Setting {
                flags: 0,
                id: spdy::settings::INITIAL_WINDOW_SIZE,
                value: STREAM_WINDOW,
            }],
        });
        state.queue(Frame::WindowUpdate {
            stream_id: 0,
            delta: SESSION_WINDOW - spdy::INITIAL_WINDOW,
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            writer_wake: Notify::new(),
            reader_wake: Notify::new(),
            closed: watch::Sender::new(None),
        });
        let (r, w) = tokio::io::split(io);
        let reader = tokio::spawn(read_loop(shared.clone(), r));
        let writer = tokio::spawn(write_loop(shared.clone(), w));
        shared.lock().tasks = vec![reader.abort_handle(), writer.abort_handle()];
        (SpdyConn { shared }, Incoming { rx })
    }

    /// Opens a stream with `headers` (`fin`: we send nothing on it) and waits for the
    /// peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers, fin: bool) -> Result<SpdyStream, ConnError> {
        let (tx, rx) = oneshot::channel();
        let stream_id = {
            let mut st = self.shared.lock();
            if let Some(ended) = &st.ended {
                return Err(ended.clone().err().unwrap_or(ConnError::Closed));
            }
            if st.goaway_received {
                return Err(ConnError::GoneAway);
            }
            let id = st.next_id;
            if id > MAX_STREAM_ID {
                return Err(ConnError::IdsExhausted);
            }
            st.next_id += 2;
            let mut s = StreamState::new(st.peer_initial_window);
            s.local_fin = fin;
            s.reply = Some(tx);
            st.streams.insert(id, s);
            st.queue(Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                fin,
                unidirectional: false,
                headers: headers.clone(),
            });
            id
        };
        self.shared.writer_wake.notify_one();
        // Made before waiting: if this future is dropped, the stream is cancelled.
        let stream = SpdyStream {
            shared: self.shared.clone(),
            id: stream_id,
            headers,
        };
        match rx.await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnError::Closed),
        }
    }

    /// Sends a PING and waits for its answer.
    pub async fn ping(&self) -> Result<Duration, ConnError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.ended.is_some() {
                return Err(ConnError::Closed);
            }
            let id = st.next_ping;
            st.next_ping = if id >= MAX_STREAM_ID - 1 {
                id % 2 + 2
            } else {
                id + 2
            };
            st.pings.insert(id, (Instant::now(), tx));
            st.queue(Frame::Ping { id });
        }
        self.shared.writer_wake.notify_one();
        rx.await.map_err(|_| ConnError::Closed)
    }

    /// Sends GOAWAY and ends the connection: streams fail once their buffered data is
    /// read, frames already queued are still written, then the byte stream is shut down.
    pub fn close(&self) {
        self.shared.end(Ok(()), Some(spdy::goaway::OK));
    }

    /// Waits until the connection has ended: `Ok` for a close by either side, the error
    /// if it failed.
    pub async fn closed(&self) -> Result<(), ConnError> {
        let mut rx = self.shared.closed.subscribe();
        match rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone().unwrap_or(Ok(())),
            Err(_) => Ok(()),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.lock().ended.is_some()
    }
}

impl Drop for SpdyConn {
    fn drop(&mut self) {
        self.close();
    }
}

/// One stream: reads return the peer's data and end after its FIN; `shutdown` sends our
/// FIN. Dropping a stream that is not finished both ways resets it (CANCEL).
pub struct SpdyStream {
    shared: Arc<Shared>,
    id: u32,
    headers: Headers,
}

impl std::fmt::Debug for SpdyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyStream").field("id", &self.id).finish()
    }
}

impl SpdyStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of the SYN_STREAM that opened this stream.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Resets the stream (RST_STREAM CANCEL): both directions end, buffered data is
    /// dropped.
    pub fn reset(&self) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return;
        };
        if s.reset.is_some() {
            return;
        }
        s.reset = Some(ConnError::LocalReset { stream_id: self.id });
        let freed = std::mem::take(&mut s.buffered);
        s.recv.clear();
        s.wake();
        st.session_buffered -= freed;
        st.credit_session(freed);
        if st.ended.is_none() {
            st.rst(self.id, spdy::rst::CANCEL);
        }
        drop(guard);
        self.shared.writer_wake.notify_one();
        self.shared.reader_wake.notify_one();
    }
}

impl Drop for SpdyStream {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if let Some(s) = st.streams.remove(&self.id) {
            if s.reset.is_none() && !(s.local_fin && s.recv_fin) && st.ended.is_none() {
                st.rst(self.id, spdy::rst::CANCEL);
            }
            st.session_buffered -= s.buffered;
            st.credit_session(s.buffered);
            if st.is_peer_id(self.id) {
                st.peer_streams -= 1;
            }
        }
        drop(guard);
        self.shared.writer_wake.notify_one();
        self.shared.reader_wake.notify_one();
    }
}

impl AsyncRead for SpdyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(ConnError::Closed.to_io()));
        };
        // A reset from the peer after its FIN does not take back what it sent.
        if let Some(e) = &s.reset
            && !(s.recv_fin && matches!(e, ConnError::Reset { .. }))
        {
            return Poll::Ready(Err(e.to_io()));
        }
        if s.buffered == 0 {
            if s.recv_fin {
                return Poll::Ready(Ok(()));
            }
            if let Some(ended) = &st.ended {
                let e = ended.clone().err().unwrap_or(ConnError::Closed);
                return Poll::Ready(Err(e.to_io()));
            }
            s.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = 0;
        while buf.remaining() > 0 {
            let Some(chunk) = s.recv.front() else { break };
            let part = &chunk[s.recv_offset..];
            let take = part.len().min(buf.remaining());
            buf.put_slice(&part[..take]);
            n += take;
            s.recv_offset += take;
            if s.recv_offset == chunk.len() {
                s.recv.pop_front();
                s.recv_offset = 0;
            }
        }
        s.buffered -= n;
        s.unacked += n;
        let mut update = None;
        if !s.recv_fin && s.unacked >= STREAM_WINDOW as usize / 2 {
            let delta = std::mem::take(&mut s.unacked);
            s.recv_window += delta as i64;
            update = Some(delta as u32);
        }
        st.session_buffered -= n;
        st.credit_session(n);
        if let Some(delta) = update {
            st.queue(Frame::WindowUpdate {
                stream_id: self.id,
                delta,
            });
        }
        drop(guard);
        self.shared.writer_wake.notify_one();
        self.shared.reader_wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SpdyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if let Some(ended) = &st.ended {
            let e = ended.clone().err().unwrap_or(ConnError::Closed);
            return Poll::Ready(Err(e.to_io()));
        }
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(ConnError::Closed.to_io()));
        };
        if let Some(e) = &s.reset {
            return Poll::Ready(Err(e.to_io()));
        }
        if s.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut n = buf.len().min(MAX_DATA_FRAME);
        if st.peer_fc {
            n = n
                .min(s.send_window.max(0) as usize)
                .min(st.session_send.max(0) as usize);
        }
        if n == 0 || st.queued_data >= WRITE_QUEUE_LIMIT {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        s.send_window -= n as i64;
        st.session_send -= n as i64;
        st.queue(Frame::Data {
            stream_id: self.id,
            fin: false,
            data: buf[..n].to_vec(),
        });
        drop(guard);
        self.shared.writer_wake.notify_one();
        Poll::Ready(Ok(n))
    }

    /// Queued data is written by the connection's writer as soon as it can; there is
    /// nothing to wait for here.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends FIN: the peer reads EOF after the data written so far.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        if st.ended.is_some() {
            return Poll::Ready(Err(ConnError::Closed.to_io()));
        }
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(ConnError::Closed.to_io()));
        };
        if let Some(e) = &s.reset {
            return Poll::Ready(Err(e.to_io()));
        }
        if !s.local_fin {
            s.local_fin = true;
            st.queue(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Vec::new(),
            });
            drop(st);
            self.shared.writer_wake.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

/// Encodes and writes queued frames in order until the connection ends.
async fn write_loop<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut w: W) {
    let mut encoder = Encoder::new();
    let mut buf = Vec::with_capacity(256 << 10);
    loop {
        let (frames, closing) = {
            let mut st = shared.lock();
            let mut frames = Vec::new();
            let mut bytes = 0;
            while bytes < 256 << 10
                && let Some(f) = st.out.pop_front()
            {
                bytes += match &f {
                    Frame::Data { data, .. } => data.len() + 8,
                    _ => 64,
                };
                frames.push(f);
            }
            (frames, st.closing)
        };
        if frames.is_empty() {
            if closing {
                let _ = w.shutdown().await;
                shared.abort_tasks();
                return;
            }
            shared.writer_wake.notified().await;
            continue;
        }
        buf.clear();
        let (mut data, mut control) = (0, 0);
        for f in &frames {
            match f {
                Frame::Data { data: d, .. } => data += d.len(),
                _ => control += 1,
            }
            if let Err(e) = encoder.encode(f, &mut buf) {
                shared.end(Err(ConnError::Protocol(Arc::new(e))), None);
                shared.abort_tasks();
                return;
            }
        }
        let written = match w.write_all(&buf).await {
            Ok(()) => w.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            shared.end(Err(ConnError::Io(Arc::new(e))), None);
            shared.abort_tasks();
            return;
        }
        {
            let mut st = shared.lock();
            let was_full = st.queued_data >= WRITE_QUEUE_LIMIT;
            st.queued_data -= data;
            st.control_backlog -= control;
            if was_full && st.queued_data < WRITE_QUEUE_LIMIT {
                st.wake_writers();
            }
        }
        shared.reader_wake.notify_one();
    }
}

/// Reads and handles frames until EOF or an error.
async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut r: R) {
    let mut decoder = Decoder::new();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let mut start = 0;
        loop {
            match decoder.decode(&buf[start..]) {
                Ok(Some((frame, n))) => {
                    start += n;
                    if let Err(e) = handle_frame(&shared, frame).await {
                        shared.end(Err(e), Some(spdy::goaway::PROTOCOL_ERROR));
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let e = ConnError::Protocol(Arc::new(e));
                    shared.end(Err(e), Some(spdy::goaway::PROTOCOL_ERROR));
                    return;
                }
            }
        }
        buf.drain(..start);
        buf.reserve(READ_CHUNK);
        match r.read_buf(&mut buf).await {
            Ok(0) => {
                shared.end(Ok(()), None);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                shared.end(Err(ConnError::Io(Arc::new(e))), None);
                shared.abort_tasks();
                return;
            }
        }
    }
}

async fn handle_frame(shared: &Arc<Shared>, frame: Frame) -> Result<(), ConnError> {
    // Our answers wait in the queue: while too many do, stop reading (back-pressure on a
    // peer that sends pings but does not read).
    loop {
        {
            let st = shared.lock();
            if st.control_backlog < MAX_CONTROL_BACKLOG || st.ended.is_some() {
                break;
            }
        }
        shared.reader_wake.notified().await;
    }
    if let Frame::Data {
        stream_id,
        fin,
        data,
    } = frame
    {
        return handle_data(shared, stream_id, fin, data).await;
    }
    let mut guard = shared.lock();
    let st = &mut *guard;
    let mut deliver = None;
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            unidirectional,
            headers,
            ..
        } => {
            if !st.is_peer_id(stream_id) || stream_id <= st.last_peer_id {
                st.rst(stream_id, spdy::rst::PROTOCOL_ERROR);
            } else if st.peer_streams >= MAX_PEER_STREAMS || st.incoming.is_none() {
                st.last_peer_id = stream_id;
                st.rst(stream_id, spdy::rst::REFUSED_STREAM);
            } else {
                st.last_peer_id = stream_id;
                st.peer_streams += 1;
                let mut s = StreamState::new(st.peer_initial_window);
                s.recv_fin = fin;
                s.local_fin = unidirectional;
                st.streams.insert(stream_id, s);
                if !unidirectional {
                    st.queue(Frame::SynReply {
                        stream_id,
                        fin: false,
                        headers: Headers::new(),
                    });
                }
                let stream = SpdyStream {
                    shared: shared.clone(),
                    id: stream_id,
                    headers,
                };
                deliver = st.incoming.clone().map(|tx| (tx, stream));
            }
        }
        Frame::SynReply { stream_id, fin, .. } | Frame::Headers { stream_id, fin, .. } => {
            if let Some(s) = st.streams.get_mut(&stream_id) {
                if let Some(tx) = s.reply.take() {
                    let _ = tx.send(Ok(()));
                }
                if fin {
                    s.recv_fin = true;
                    wake(&mut s.read_waker);
                }
            }
        }
        Frame::RstStream { stream_id, status } => {
            if let Some(s) = st.streams.get_mut(&stream_id) {
                let e = ConnError::Reset { stream_id, status };
                if let Some(tx) = s.reply.take() {
                    let _ = tx.send(Err(e.clone()));
                }
                s.reset.get_or_insert(e);
                s.wake();
            }
        }
        Frame::Settings { entries, .. } => {
            st.peer_fc = true;
            for e in entries {
                if e.id == spdy::settings::INITIAL_WINDOW_SIZE {
                    let new = i64::from(e.value.min(MAX_STREAM_ID));
                    let delta = new - st.peer_initial_window;
                    st.peer_initial_window = new;
                    for s in st.streams.values_mut() {
                        s.send_window += delta;
                        wake(&mut s.write_waker);
                    }
                }
            }
        }
        Frame::Ping { id } => {
            if st.is_peer_id(id) {
                st.queue(Frame::Ping { id });
            } else if let Some((sent, tx)) = st.pings.remove(&id) {
                let _ = tx.send(sent.elapsed());
            }
        }
        Frame::GoAway {
            last_good_stream_id,
            ..
        } => {
            st.goaway_received = true;
            // Our streams above the last one it took were never seen by the peer.
            let is_client = st.is_client;
            for (&id, s) in st.streams.iter_mut() {
                if ((id % 2 == 1) == is_client) && id > last_good_stream_id {
                    let e = ConnError::Reset {
                        stream_id: id,
                        status: spdy::rst::REFUSED_STREAM,
                    };
                    if let Some(tx) = s.reply.take() {
                        let _ = tx.send(Err(e.clone()));
                    }
                    s.reset.get_or_insert(e);
                    s.wake();
                }
            }
        }
        Frame::WindowUpdate { stream_id, delta } => {
            st.peer_fc = true;
            if stream_id == 0 {
                st.session_send += i64::from(delta);
                if st.session_send > i64::from(MAX_STREAM_ID) {
                    return Err(ConnError::WindowOverflow);
                }
                st.wake_writers();
            } else if let Some(s) = st.streams.get_mut(&stream_id) {
                s.send_window += i64::from(delta);
                if s.send_window > i64::from(MAX_STREAM_ID) {
                    s.reset.get_or_insert(ConnError::LocalReset { stream_id });
                    s.wake();
                    st.rst(stream_id, spdy::rst::FLOW_CONTROL_ERROR);
                } else {
                    wake(&mut s.write_waker);
                }
            }
        }
        Frame::Data { .. } | Frame::Unknown { .. } => {}
    }
    drop(guard);
    shared.writer_wake.notify_one();
    if let Some((tx, stream)) = deliver {
        // A closed channel drops (and so cancels) the stream: outside the lock.
        let _ = tx.send(stream);
    }
    Ok(())
}

/// Files a data frame into its stream's buffer, waiting (without reading further) while
/// that buffer or the session's is full.
async fn handle_data(
    shared: &Arc<Shared>,
    stream_id: u32,
    fin: bool,
    data: Vec<u8>,
) -> Result<(), ConnError> {
    let len = data.len();
    {
        let mut guard = shared.lock();
        let st = &mut *guard;
        st.session_recv -= len as i64;
        if st.peer_fc && st.session_recv < 0 {
            return Err(ConnError::SessionWindowExceeded);
        }
        let peer_fc = st.peer_fc;
        let refuse = match st.streams.get_mut(&stream_id) {
            None => true,
            Some(s) if s.reset.is_some() => true,
            Some(s) if s.recv_fin => {
                s.reset = Some(ConnError::LocalReset { stream_id });
                s.wake();
                st.rst(stream_id, spdy::rst::STREAM_ALREADY_CLOSED);
                true
            }
            Some(s) => {
                s.recv_window -= len as i64;
                if peer_fc && s.recv_window < 0 {
                    s.reset = Some(ConnError::LocalReset { stream_id });
                    s.wake();
                    st.rst(stream_id, spdy::rst::FLOW_CONTROL_ERROR);
                    true
                } else {
                    false
                }
            }
        };
        if refuse {
            st.credit_session(len);
            drop(guard);
            shared.writer_wake.notify_one();
            return Ok(());
        }
    }
    loop {
        {
            let mut guard = shared.lock();
            let st = &mut *guard;
            let session_buffered = st.session_buffered;
            let ended = st.ended.is_some();
            let Some(s) = st.streams.get_mut(&stream_id).filter(|s| s.reset.is_none()) else {
                st.credit_session(len);
                drop(guard);
                shared.writer_wake.notify_one();
                return Ok(());
            };
            let stream_fits = s.buffered == 0 || s.buffered + len <= STREAM_WINDOW as usize;
            let session_fits =
                session_buffered == 0 || session_buffered + len <= SESSION_WINDOW as usize;
            if ended || (stream_fits && session_fits) {
                if len > 0 {
                    s.buffered += len;
                    s.recv.push_back(data);
                }
                s.recv_fin |= fin;
                wake(&mut s.read_waker);
                st.session_buffered += len;
                return Ok(());
            }
        }
        shared.reader_wake.notified().await;
    }
}

#[cfg(test)]
#[path = "spdy_conn_tests.rs"]
mod tests;
