//! Cold start of the Lambda binaries: the time from spawning the process until it asks
//! a Lambda runtime API stub for its first event, and the stripped binary size.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The request every function makes first.
const NEXT_EVENT: &str = "GET /2018-06-01/runtime/invocation/next";
/// Longest wait for the first event request before a run counts as failed.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Milliseconds from spawn to the first event request of `binary`, once.
pub fn time_to_first_event(binary: &Path, name: &str) -> Result<f64, String> {
    let stub = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let address = stub.local_addr().map_err(|e| e.to_string())?;
    stub.set_nonblocking(true).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .envs(function_env(name, &address.to_string()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let arrival = wait_for_next_event(&stub, started);
    // The function would now block on the answer: it has done its cold start.
    let _ = child.kill();
    let _ = child.wait();
    arrival.map(|elapsed| elapsed.as_secs_f64() * 1000.0)
}

/// Accepts connections until one carries the next-event request; answers its arrival
/// time since `started`.
fn wait_for_next_event(stub: &TcpListener, started: Instant) -> Result<Duration, String> {
    loop {
        match stub.accept() {
            Ok((stream, _)) => {
                if is_next_event_request(stream)? {
                    return Ok(started.elapsed());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() > FIRST_REQUEST_TIMEOUT {
                    return Err("no request for the first event within 10 s".into());
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Reads the request line; the time that matters is when it arrived, so nothing is answered.
fn is_next_event_request(stream: TcpStream) -> Result<bool, String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(FIRST_REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut request_line = String::new();
    BufReader::new(stream)
        .read_line(&mut request_line)
        .map_err(|e| e.to_string())?;
    Ok(request_line.starts_with(NEXT_EVENT))
}

/// What Lambda sets, plus what the functions read at start (fake credentials: nothing
/// reaches AWS before the first event).
fn function_env(name: &str, runtime_api: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", format!("batchline-{name}")),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/batchline-{name}"),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2026/11/22/[$LATEST]bench".into(),
        ),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ("AWS_SESSION_TOKEN", "bench".into()),
        ("BUCKET_NAME", "batchline-bench".into()),
        (
            "READY_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/batchline-ready".into(),
        ),
        ("OPENAI_API_KEY", "bench-key".into()),
        ("RUST_LOG", "info".into()),
    ]
}
