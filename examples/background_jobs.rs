//! Background jobs: an HTTP handler enqueues a job and answers at once; a worker sends the
//! welcome email afterwards, retrying if the mail server hiccups.
//!
//! `cargo run -p sluice-examples --example background_jobs`

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use sluice::prelude::*;
use sluice::runtime::{Job, JobOptions, Jobs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The job: declared once, with its defaults.
#[derive(serde::Serialize, serde::Deserialize)]
struct SendWelcomeEmail {
    email: String,
}

impl Job for SendWelcomeEmail {
    const NAME: &'static str = "send-welcome-email";
    fn options() -> JobOptions {
        JobOptions::default()
            .max_attempts(5)
            .timeout(Duration::from_secs(10))
            .concurrency(4)
            .backoff(Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_secs(5),
            ))
    }
}

#[derive(serde::Deserialize)]
struct Signup {
    email: String,
}

struct App {
    jobs: Jobs<DynBackend>,
    started: Instant,
}

/// The HTTP handler: enqueue and return; the email is not sent on the request's time.
async fn signup(State(app): State<Arc<App>>, Json(form): Json<Signup>) -> (StatusCode, String) {
    match app
        .jobs
        .enqueue(&SendWelcomeEmail { email: form.email })
        .await
    {
        Ok(receipt) => {
            println!(
                "[{:>4} ms] POST /signup → 202, job {} enqueued",
                app.started.elapsed().as_millis(),
                receipt.id
            );
            (StatusCode::ACCEPTED, "welcome email on its way\n".into())
        }
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("try again: {err}\n"),
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let backend = sluice::connect("memory:").await?;
    let app = Arc::new(App {
        jobs: Jobs::new(backend).await?,
        started,
    });

    // The worker: the first attempt finds the mail server busy, the retry sends it.
    let (sent_tx, mut sent) = mpsc::channel(1);
    let worker = app
        .jobs
        .worker(move |job: SendWelcomeEmail, ctx: Context| {
            let sent_tx = sent_tx.clone();
            async move {
                if ctx.attempt() == 1 {
                    println!(
                        "[{:>4} ms] mail server busy, will retry",
                        started.elapsed().as_millis()
                    );
                    return Err(HandlerError::transient("421 try again later"));
                }
                println!(
                    "[{:>4} ms] welcome email sent to {} (attempt {})",
                    started.elapsed().as_millis(),
                    job.email,
                    ctx.attempt()
                );
                let _ = sent_tx.send(()).await;
                Ok(())
            }
        })
        .await?
        .build();
    let shutdown = CancellationToken::new();
    let running = worker.spawn(shutdown.clone());

    // The web server, on a free loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route("/signup", post(signup))
        .with_state(app.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    // A client signs up.
    let body = r#"{"email":"ada@example.com"}"#;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST /signup HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    println!(
        "[{:>4} ms] client got: {}",
        started.elapsed().as_millis(),
        response.lines().next().unwrap_or_default()
    );

    tokio::time::timeout(Duration::from_secs(10), sent.recv()).await?;
    shutdown.cancel();
    running.await?;
    server.abort();
    Ok(())
}
