//! Unit tests of `postgres`, beside it (moved out of the file to keep it readable).

use super::*;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// Runs one statement with the public [`psql`](super::psql), trimmed (a client: it does
/// not mind running as root).
fn psql(server: &PostgresServer, db: &str, sql: &str) -> io::Result<String> {
    super::psql(&server.url_for(db), sql).map(|out| out.trim().to_owned())
}

#[test]
fn starts_answers_stops_and_restarts_on_the_same_port_with_its_data() {
    let mut server = PostgresServer::start();
    let port = server.port();
    assert_eq!(
        server.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    assert_eq!(psql(&server, "postgres", "show fsync").unwrap(), "off");
    assert_eq!(
        psql(&server, "postgres", "show listen_addresses").unwrap(),
        "127.0.0.1"
    );
    let url = server.create_database("kept").unwrap();
    assert!(url.ends_with(&format!(":{port}/kept")), "{url}");
    psql(
        &server,
        "kept",
        "create table t (x int); insert into t values (7)",
    )
    .unwrap();
    let socket = server.data_dir().join(format!(".s.PGSQL.{port}"));
    assert!(socket.exists(), "the unix socket lives in the data dir");

    server.stop();
    assert!(!server.is_running());
    assert!(!accepts(port), "a stopped server must not accept");
    server.stop(); // idempotent

    server.restart();
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_eq!(psql(&server, "kept", "select x from t").unwrap(), "7");
}

#[test]
fn fsync_can_be_kept_on_and_drop_cleans_up() {
    let server = PostgresServer::start_with(PostgresOptions {
        fsync: true,
        ..PostgresOptions::default()
    });
    assert_eq!(psql(&server, "postgres", "show fsync").unwrap(), "on");
    let (port, dir) = (server.port(), server.dir.clone());
    assert!(dir.exists());
    drop(server);
    assert!(!accepts(port));
    assert!(!dir.exists());
}

#[test]
fn missing_binaries_name_the_package() {
    let err = PostgresServer::try_start_with(PostgresOptions {
        bin_dir: Some("/nonexistent/bin".into()),
        ..PostgresOptions::default()
    })
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("apt-get install -y postgresql"),
        "{err}"
    );
}

#[test]
fn a_port_held_by_another_server_is_not_taken_for_ours() {
    let other = PostgresServer::start();
    let mut clash = PostgresServer::start();
    clash.stop();
    clash.port = other.port();
    let err = clash.spawn_and_wait().expect_err("the port is taken");
    assert!(err.to_string().contains("exited during start"), "{err}");
    assert!(accepts(other.port()), "the other server is untouched");
}

#[test]
fn postmaster_pid_is_read_strictly() {
    let file = "42\n/d\n1\n5432\n/d\n127.0.0.1\n  1 2\nready   \n";
    assert!(postmaster_ready(file, Some(42), 5432));
    assert!(!postmaster_ready(file, Some(43), 5432), "another process");
    assert!(!postmaster_ready(file, Some(42), 5433), "another port");
    let starting = file.replace("ready   ", "starting");
    assert!(!postmaster_ready(&starting, Some(42), 5432));
    assert!(
        !postmaster_ready("42\n/d\n", Some(42), 5432),
        "half written"
    );
}

#[test]
fn os_users_are_read_from_passwd() {
    let (uid, _) = os_user("root").unwrap();
    assert_eq!(uid, 0);
    let err = os_user("no-such-user-keyshard").unwrap_err();
    assert!(
        err.to_string().contains("apt-get install -y postgresql"),
        "{err}"
    );
}
