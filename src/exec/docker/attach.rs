//! A worker's attached session: the engine's attach call, whose output bollard has already
//! split into stdout and stderr messages, framed again as the job server's session expects.
//! Plain containers and swarm tasks are attached the same way, through the engine they run on.

use super::{WorkerInput, WorkerOutput};
use crate::exec::jobserver::{FRAME_STDERR, FRAME_STDOUT, Session, frame_header};
use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;

/// The engine's attached output, which bollard has already taken apart into stdout and stderr
/// messages, framed again for the session. Only the headers are new bytes; an engine error
/// travels inside the I/O error, where the session finds it.
fn framed(
    output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
) -> WorkerOutput {
    let pieces = output.flat_map(|frame| {
        let (stream, message) = match frame {
            Ok(LogOutput::StdOut { message }) => (FRAME_STDOUT, message),
            Ok(LogOutput::StdErr { message }) => (FRAME_STDERR, message),
            Ok(_) => return futures_util::stream::iter(vec![]),
            Err(e) => return futures_util::stream::iter(vec![Err(std::io::Error::other(e))]),
        };
        futures_util::stream::iter(match frame_header(stream, message.len()) {
            Some(header) => vec![Ok(Bytes::copy_from_slice(&header)), Ok(message)],
            None => vec![Err(std::io::Error::other(
                "the engine sent a message too long to frame",
            ))],
        })
    });
    Box::pin(tokio_util::io::StreamReader::new(pieces))
}

/// Attach to a worker container's stdin, stdout and stderr for its job server's session, and
/// hold its stdin for its whole life. No log replay: it would corrupt output.
pub(super) async fn attach(
    docker: &bollard::Docker,
    id: &str,
) -> Result<Session<WorkerOutput, WorkerInput>, bollard::errors::Error> {
    let attach = docker
        .attach_container(
            id,
            Some(
                AttachContainerOptionsBuilder::default()
                    .stdin(true)
                    .stdout(true)
                    .stderr(true)
                    .stream(true)
                    .logs(false)
                    .build(),
            ),
        )
        .await?;
    Ok(Session::attached(framed(attach.output), attach.input))
}
