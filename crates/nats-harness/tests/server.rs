//! One server: start and stop, crash and restart on the same store, pause
//! and resume, settings that reach the config file.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::future::try_join_all;
use nats_harness::{NatsServer, eventually};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn start_and_stop() -> TestResult {
    let mut server = NatsServer::start().await?;
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert!(server.pid().is_some());

    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: "START".into(),
            subjects: vec!["start.>".into()],
            ..Default::default()
        })
        .await?;
    js.publish("start.one", "hello".into()).await?.await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    assert!(
        server.log().contains("Server is ready"),
        "log:\n{}",
        server.log()
    );

    server.stop().await?;
    assert_eq!(server.pid(), None);
    // The process has exited, so nothing listens on the port any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err());
    // Stopping twice is fine.
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn kill_then_restart_keeps_the_file_store() -> TestResult {
    const N: u64 = 50;
    let mut server = NatsServer::start().await?;
    let (port, store) = (server.port(), server.store_dir().to_path_buf());
    {
        let js = jetstream::new(async_nats::connect(server.url()).await?);
        js.get_or_create_stream(stream::Config {
            name: "DURABLE".into(),
            subjects: vec!["durable.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
        for i in 1..=N {
            js.publish(format!("durable.{i}"), format!("message {i}").into())
                .await?
                .await?;
        }
    }

    server.kill().await?;
    assert_eq!(server.pid(), None);
    server.restart().await?;
    assert_eq!((server.port(), server.store_dir()), (port, store.as_path()));
    assert!(server.pid().is_some());

    let js = jetstream::new(async_nats::connect(server.url()).await?);
    // The first requests to a just restarted server may time out on a
    // loaded machine: poll until the stream answers.
    let (stream, info) = eventually(
        "the restarted stream answers",
        Duration::from_secs(20),
        || async {
            let mut stream = js.get_stream("DURABLE").await.map_err(|e| e.to_string())?;
            let info = stream.info().await.map_err(|e| e.to_string())?.clone();
            Ok::<_, String>((stream, info))
        },
    )
    .await?;
    assert_eq!(info.state.messages, N);
    assert_eq!(info.state.last_sequence, N);
    let last = stream
        .get_last_raw_message_by_subject(&format!("durable.{N}"))
        .await?;
    assert_eq!(last.sequence, N);
    assert_eq!(last.payload, format!("message {N}").as_bytes());
    assert!(server.log().contains("nats-harness: restarting"));
    Ok(())
}

#[tokio::test]
async fn pause_and_resume() -> TestResult {
    let server = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let short = Duration::from_millis(500);
    let answers = || async {
        match tokio::time::timeout(short, js.query_account()).await {
            Ok(Ok(account)) => Ok(account),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
    };
    // A loaded machine may take longer than `short` for the first answer.
    eventually("the fresh server answers", Duration::from_secs(10), answers).await?;

    server.pause()?;
    let while_paused = tokio::time::timeout(short, js.query_account()).await;
    assert!(
        !matches!(while_paused, Ok(Ok(_))),
        "a paused server answered: {while_paused:?}"
    );

    server.resume()?;
    eventually(
        "the resumed server answers",
        Duration::from_secs(10),
        answers,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn stop_a_paused_server() -> TestResult {
    let mut server = NatsServer::start().await?;
    server.pause()?;
    server.stop().await?;
    assert_eq!(server.pid(), None);
    assert!(matches!(
        server.pause(),
        Err(nats_harness::HarnessError::NotRunning { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn server_without_jetstream() -> TestResult {
    let server = NatsServer::builder().jetstream(false).start().await?;
    let client = async_nats::connect(server.url()).await?;
    client
        .publish("plain.subject", "core NATS works".into())
        .await?;
    client.flush().await?;
    let js = jetstream::new(client);
    let err = js.query_account().await.expect_err("JetStream is disabled");
    assert!(!err.to_string().is_empty());
    Ok(())
}

#[tokio::test]
async fn max_payload_and_config_snippet_reach_the_server() -> TestResult {
    let server = NatsServer::builder()
        .max_payload(4096)
        .config_snippet("max_connections: 7")
        .start()
        .await?;
    let client = async_nats::connect(server.url()).await?;
    assert_eq!(client.server_info().max_payload, 4096);
    let config = std::fs::read_to_string(server.config_path())?;
    assert!(config.contains("max_connections: 7"), "{config}");
    Ok(())
}

#[tokio::test]
async fn many_servers_at_once_get_distinct_ports() -> TestResult {
    let servers = try_join_all((0..6).map(|_| NatsServer::start())).await?;
    let mut ports: Vec<u16> = servers
        .iter()
        .flat_map(|s| [s.port(), s.monitor_port()])
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 12);
    for server in &servers {
        let client = async_nats::connect(server.url()).await?;
        assert_eq!(client.server_info().server_name, server.name());
    }
    Ok(())
}

#[tokio::test]
async fn drop_kills_the_process_and_removes_the_directory() -> TestResult {
    let server = NatsServer::start().await?;
    let (port, store) = (server.port(), server.store_dir().to_path_buf());
    assert!(store.exists());
    drop(server);
    assert!(!store.exists());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    Ok(())
}

#[tokio::test]
async fn restart_retries_while_its_port_is_taken() -> TestResult {
    let mut server = NatsServer::start().await?;
    server.kill().await?;
    // Someone else holds the port for a moment; restart must keep the port
    // and retry rather than fail or move.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", server.port()))?;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(squatter);
    });
    server.restart().await?;
    release.await?;
    assert!(
        server.log().contains("address already in use"),
        "{}",
        server.log()
    );
    let client = async_nats::connect(server.url()).await?;
    assert_eq!(client.server_info().server_name, server.name());
    Ok(())
}
