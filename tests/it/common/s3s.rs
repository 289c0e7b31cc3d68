//! s3s-fs, a third-party S3 server (the s3s project) that checks POST policies as S3 does, run in
//! process on a free loopback port over a temporary folder. Shared by the tests and the bench.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tower::ServiceExt;

pub const BUCKET: &str = "opcrm-import-test";
pub const ACCESS_KEY: &str = "s3s-test-access-key";
pub const SECRET_KEY: &str = "s3s-test-secret-key-0123456789";

/// The largest body frame s3s gets; see `small_frames`.
const MAX_FRAME: usize = 16 * 1024;

/// A running s3s-fs server; stops when dropped.
pub struct S3sFs {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    root: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

/// How the test server departs from plain s3s-fs, to stand for other servers and conditions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quirks {
    /// How a successful upload is answered.
    pub answer: Answer,
}

/// The `201` answer to an upload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Answer {
    /// As s3s writes it: a `PostResponse` with a relative `Location` and an unquoted `<ETag>`
    /// (and no `ETag` header).
    #[default]
    AsWritten,
    /// An absolute `Location` and `<Etag>&quot;…&quot;</Etag>`.
    Rewritten,
    /// As `Rewritten`, with an ETag that is not the object's MD5.
    WrongEtag,
    /// No body and no `ETag` header.
    Empty,
}

impl S3sFs {
    /// Starts the server with one empty bucket, `BUCKET`, and one account.
    pub fn start() -> Self {
        Self::start_with(Quirks::default())
    }

    /// As `start`, with `quirks`.
    pub fn start_with(quirks: Quirks) -> Self {
        let root = tempfile::tempdir().expect("a temporary folder");
        std::fs::create_dir(root.path().join(BUCKET)).expect("the bucket's folder");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for s3s-fs");
        let service = {
            let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs over the folder");
            let mut builder = S3ServiceBuilder::new(fs);
            builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            builder.build()
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a free loopback port");
        let addr: SocketAddr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                let per_request = tower::service_fn(move |req: hyper::Request<Incoming>| {
                    let service = service.clone();
                    async move {
                        let upload = req.method() == hyper::Method::POST;
                        let response = service.oneshot(req.map(small_frames)).await?;
                        if !upload || response.status() != hyper::StatusCode::CREATED {
                            return Ok::<_, s3s::HttpError>(response);
                        }
                        Ok(reanswer(response, quirks.answer, addr).await)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(per_request),
                    ),
                );
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            root,
            runtime: Some(runtime),
        }
    }

    /// The emulator's flags for external-S3 mode against this server; the secret goes in the
    /// environment (`envs`), as a user would pass it.
    pub fn emulator_args(&self) -> Vec<String> {
        ["--s3-endpoint", &self.endpoint, "--s3-bucket", BUCKET]
            .map(str::to_string)
            .to_vec()
    }

    /// The environment that gives the emulator this server's access key and secret key.
    pub fn envs() -> [(&'static str, &'static str); 2] {
        [
            ("OPCRM_EMULATOR_S3_ACCESS_KEY", ACCESS_KEY),
            ("OPCRM_EMULATOR_S3_SECRET_KEY", SECRET_KEY),
        ]
    }

    /// The folder s3s-fs keeps the bucket's objects in, one file per key.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }

    /// Every stored object: its key and its bytes, by key.
    pub fn objects(&self) -> Vec<(String, Vec<u8>)> {
        let mut found = Vec::new();
        walk(&self.bucket_dir(), &self.bucket_dir(), &mut found);
        found.sort();
        found
    }
}

fn walk(base: &Path, dir: &Path, found: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(base, &path, found);
        } else {
            let key = path
                .strip_prefix(base)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            found.push((key, std::fs::read(&path).unwrap()));
        }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A `201` to an upload answered as `answer` says.
async fn reanswer(
    response: hyper::Response<s3s::Body>,
    answer: Answer,
    addr: SocketAddr,
) -> hyper::Response<s3s::Body> {
    if answer == Answer::AsWritten {
        return response;
    }
    let (mut parts, mut body) = response.into_parts();
    parts.headers.remove(hyper::header::ETAG);
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    let body = match answer {
        Answer::Empty | Answer::AsWritten => s3s::Body::empty(),
        Answer::Rewritten | Answer::WrongEtag => {
            let xml = body.store_all_limited(1 << 20).await.expect("s3s's answer");
            let xml = String::from_utf8(xml.to_vec()).expect("UTF-8 XML");
            let mut rewritten = xml
                .replace("<Location>/", &format!("<Location>http://{addr}/"))
                .replace("<ETag>", "<Etag>&quot;")
                .replace("</ETag>", "&quot;</Etag>");
            assert_ne!(rewritten, xml, "s3s's PostResponse is as expected");
            if answer == Answer::WrongEtag {
                let start = rewritten.find("<Etag>&quot;").unwrap() + "<Etag>&quot;".len();
                let end = rewritten.find("&quot;</Etag>").unwrap();
                rewritten.replace_range(start..end, "0123456789abcdef0123456789abcdef");
            }
            s3s::Body::from(rewritten)
        }
    };
    hyper::Response::from_parts(parts, body)
}

/// The request body cut into frames of at most 16 KiB.
///
/// s3s 0.14.1 has a bug in its multipart parser (`src/http/multipart.rs`, `FileStream`): when a
/// body chunk ends inside what could be the start of the closing boundary (a trailing `\r`, say),
/// it appends the whole next chunk to a buffer capped at 64 KiB (`MAX_BOUNDARY_BUFFER_SIZE`) and,
/// past the cap, answers 400 "failed to read file stream". With random file bytes that hits about
/// one upload in a hundred, more for larger files, whatever the client does right. Frames of at
/// most 16 KiB keep that buffer under its cap, so the tests judge the client and not the bug. The
/// client itself is untouched: this wraps the server. The size hint is passed on (s3s needs the
/// exact length of a body that has no Content-Length, such as a HEAD's).
struct SmallFrames {
    inner: Incoming,
    /// What is left of the last data frame read from `inner`.
    pending: Bytes,
}

impl Body for SmallFrames {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let piece = this.pending.split_to(this.pending.len().min(MAX_FRAME));
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

fn small_frames(inner: Incoming) -> SmallFrames {
    SmallFrames {
        inner,
        pending: Bytes::new(),
    }
}
