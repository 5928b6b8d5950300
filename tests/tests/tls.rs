//! HTTPS served by ingest-api itself (`--tls-cert`, `--tls-key`), with a private CA made here:
//! events sent over TLS are stored, keep-alive and gzip bodies work as over HTTP, and a renewed
//! certificate is served without a restart (a broken one keeps the one in force).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use et_tests::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A private CA that issues server certificates for 127.0.0.1 and localhost.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "EventTracker test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate (PEM) and its key (PEM) named `cn`.
    fn leaf(&self, cn: &str) -> (String, String, Vec<u8>) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// An HTTPS client that trusts this CA only.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .tls_info(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }
}

/// Writes `text` to `path` through a rename, as a certificate manager does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The certificate and key files of a test, in a temp dir.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(cert: &str, key: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            _dir: dir,
        };
        replace(&files.cert, cert);
        replace(&files.key, key);
        files
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    client
        .post(format!("{url}/v1/events"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(body.to_string())
        .send()
        .await
        .expect("request sent")
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// A client trusting the test CA, with a verifier that checks the name `127.0.0.1`.
fn rustls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Reads one HTTP/1.1 response (status, headers lower-cased, body by Content-Length).
async fn read_response(
    reader: &mut BufReader<impl tokio::io::AsyncRead + Unpin>,
) -> (u16, String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed before the response ended: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.unwrap();
    (status, head, body)
}

/// Events sent over HTTPS (verification on, the test CA) are stored; several requests, plain
/// and gzipped, share one TLS connection; without the CA, or over plain HTTP, nothing gets in.
#[tokio::test]
async fn https_stores_events_with_keep_alive_and_gzip_on_one_connection() {
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf("ingest");
    let files = Files::new(&cert, &key);
    let flags = files.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let p = Pipeline::start(PipelineOptions {
        ingest: &flags,
        ..Default::default()
    })
    .await;
    let url = &p.ingest.url;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let client = ca.client();
    let res = post(&client, url, &batch("tls", 10)).await;
    assert_eq!(res.status().as_u16(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["accepted"], 10, "{answer}");

    // Three requests on one TLS connection: JSON, gzip, JSON; each answered 200, none closing it.
    let addr = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls_connector(&ca.pem)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the test CA");
    // TLS 1.3 with the post-quantum hybrid key exchange, as the README says.
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        session.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    let (read, mut write) = tokio::io::split(tls);
    let mut reader = BufReader::new(read);
    for (i, gzipped) in [false, true, false].into_iter().enumerate() {
        let text = batch("keepalive", 5).to_string();
        let (body, encoding) = if gzipped {
            (gzip(&text), "Content-Encoding: gzip\r\n")
        } else {
            (text.into_bytes(), "")
        };
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\n{encoding}Content-Length: {}\r\n\r\n",
            body.len()
        );
        write.write_all(head.as_bytes()).await.unwrap();
        write.write_all(&body).await.unwrap();
        write.flush().await.unwrap();
        let (status, headers, body) = read_response(&mut reader).await;
        assert_eq!(
            status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            !headers.contains("connection: close"),
            "request {i} closed the connection: {headers}"
        );
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["accepted"], 5, "request {i}: {answer}");
    }
    p.db.wait_rows(25).await;
    assert_eq!(p.db.rows_and_distinct().await, (25, 25));

    // A client without the test CA refuses the server; plain HTTP on the port gets nothing in.
    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let err = stranger
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let plain = url.replace("https://", "http://");
    let res = http()
        .post(format!("{plain}/v1/events"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(batch("cleartext", 1).to_string())
        .send()
        .await;
    assert!(
        res.as_ref().map_or(true, |r| r.status().as_u16() != 200),
        "plain HTTP was accepted on the HTTPS port: {res:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.db.count().await, 25);
}

/// The DER of the certificate a fresh connection is shown.
async fn served_certificate(ca: &TestCa, url: &str) -> Vec<u8> {
    let res = ca
        .client()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("GET /healthz over HTTPS");
    assert_eq!(res.status().as_u16(), 200);
    res.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("the peer certificate")
        .to_vec()
}

/// New certificate files are served to new connections without a restart; a key that does
/// not match keeps the pair in force (logged, counted); SIGHUP also rereads.
#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let ca = TestCa::new();
    let (cert1, key1, der1) = ca.leaf("first");
    let files = Files::new(&cert1, &key1);
    let flags = files.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let key = unique("tls");
    let mut ingest = Ingest::start(&shared_redis_url(), &key, &flags);
    assert_eq!(served_certificate(&ca, &ingest.url).await, der1);

    let tls_errors = |page: &str| {
        labelled_in(
            page,
            "eventtracker_ingest_reloads_total",
            "what=\"tls\",result=\"error\"",
        )
        .expect("the reload counter")
    };

    // Renewals: the key, then 120 ms later the certificate, as a tool that writes one file after
    // the other. Each is served, and none is counted as a failed reload (the half-written pair
    // is not read: ingest-api waits for the files to settle). The key is written ~150 ms after
    // the previous pair was first served, i.e. after a poll, so that the next poll (250 ms
    // apart) falls between the two writes.
    let mut der2 = der1;
    for n in 0..4 {
        let (cert, key, der) = ca.leaf(&format!("renewal-{n}"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        replace(&files.key, &key);
        tokio::time::sleep(Duration::from_millis(120)).await;
        replace(&files.cert, &cert);
        wait_for("the renewed certificate to be served", LONG, || async {
            (served_certificate(&ca, &ingest.url).await == der).then_some(())
        })
        .await;
        der2 = der;
    }
    let page = scrape_https(&ca, &ingest.url).await;
    assert_eq!(tls_errors(&page), 0.0, "a renewal counted as a failure");
    assert!(
        !ingest.proc.log_text().contains("not reloaded"),
        "{}",
        ingest.proc.log_text()
    );

    // A key that does not belong to the certificate: the pair in force stays.
    let before = tls_errors(&scrape_https(&ca, &ingest.url).await);
    let (_, stray_key, _) = ca.leaf("stray");
    replace(&files.key, &stray_key);
    wait_for("the failed reload to be counted", LONG, || async {
        (tls_errors(&scrape_https(&ca, &ingest.url).await) > before).then_some(())
    })
    .await;
    assert!(
        ingest
            .proc
            .log_text()
            .contains("keeping the certificate in force"),
        "{}",
        ingest.proc.log_text()
    );
    assert_eq!(served_certificate(&ca, &ingest.url).await, der2);
    assert!(!ingest.proc.log_text().contains("PRIVATE KEY"));

    // Mended, and a SIGHUP rereads it at once.
    let (cert3, key3, der3) = ca.leaf("third");
    replace(&files.cert, &cert3);
    replace(&files.key, &key3);
    ingest.proc.signal("HUP");
    wait_for("the third certificate to be served", LONG, || async {
        (served_certificate(&ca, &ingest.url).await == der3).then_some(())
    })
    .await;
    assert!(ingest.proc.is_running());
    let res = post(&ca.client(), &ingest.url, &batch("after-renewal", 3)).await;
    assert_eq!(res.status().as_u16(), 200);
}

async fn scrape_https(ca: &TestCa, url: &str) -> String {
    ca.client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Missing or mismatched files at start are refused with the file named.
#[test]
fn a_bad_pair_at_start_is_refused() {
    let ca = TestCa::new();
    let (cert, _, _) = ca.leaf("a");
    let (_, other_key, _) = ca.leaf("b");
    let files = Files::new(&cert, &other_key);
    let out = std::process::Command::new(bin("ingest-api"))
        .args(["--bind", "127.0.0.1:0", "--tokens", "s=t"])
        .args(files.flags())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.key"), "{err}");
    let out = std::process::Command::new(bin("ingest-api"))
        .args(["--bind", "127.0.0.1:0", "--tokens", "s=t"])
        .args(["--tls-cert", files.cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "--tls-cert alone is a usage error"
    );
}
