//! Authentication: JWT policies against keys generated here and served over
//! HTTPS by a real JWKS server with a private CA, and API keys. Every refusal
//! asserts its status and `WWW-Authenticate`.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::tls::{HttpsServer, TestCa};
use common::*;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A signing key and its public JWK.
#[derive(Clone)]
struct SigningKey {
    alg: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
    jwk: Value,
    /// The public key as PEM (RSA only).
    public_pem: Option<String>,
}

/// RSA key generation is slow: one key for the whole test binary.
fn rsa_key() -> SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = private.to_public_key();
        SigningKey {
            alg: Algorithm::RS256,
            kid: Some("rsa-1".into()),
            key: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            jwk: json!({
                "kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
                "n": B64.encode(public.n().to_bytes_be()),
                "e": B64.encode(public.e().to_bytes_be()),
            }),
            public_pem: Some(public.to_public_key_pem(LineEnding::LF).unwrap()),
        }
    })
    .clone()
}

fn ec_key(kid: &str) -> SigningKey {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as P256};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&P256, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&P256, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    SigningKey {
        alg: Algorithm::ES256,
        kid: Some(kid.into()),
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": B64.encode(&point[1..33]),
            "y": B64.encode(&point[33..65]),
        }),
        public_pem: None,
    }
}

fn ed_key(kid: &str) -> SigningKey {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    SigningKey {
        alg: Algorithm::EdDSA,
        kid: Some(kid.into()),
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
            "x": B64.encode(pair.public_key().as_ref()),
        }),
        public_pem: None,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "fn-api";

/// Good claims for `sub`, with `extra` merged in.
fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE,
        "iat": now(), "exp": now() + 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, claims, &key.key).unwrap()
}

/// A JWKS server over HTTPS whose key set the test can change.
struct Jwks {
    server: HttpsServer,
    keys: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    ca_path: String,
    _dir: tempfile::TempDir,
}

impl Jwks {
    async fn start(keys: Vec<Value>) -> Self {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = ca.write(dir.path());
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let (k, h) = (keys.clone(), hits.clone());
        let server = HttpsServer::start(
            ca.server_config(&["localhost", "127.0.0.1"]),
            move |req: Request<hyper::body::Incoming>| {
                let (k, h) = (k.clone(), h.clone());
                async move {
                    let body = match req.uri().path() {
                        "/jwks" => {
                            h.fetch_add(1, Ordering::SeqCst);
                            json!({ "keys": *k.lock().unwrap() })
                        }
                        // The OpenID configuration of an issuer (discovery_url).
                        "/.well-known/openid-configuration" => {
                            let host = req.headers()["host"].to_str().unwrap().to_owned();
                            json!({ "issuer": ISSUER, "jwks_uri": format!("https://{host}/jwks") })
                        }
                        _ => {
                            return Response::builder().status(404).body(empty()).unwrap();
                        }
                    };
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(full(body.to_string()))
                        .unwrap()
                }
            },
        )
        .await;
        Self {
            server,
            keys,
            hits,
            ca_path,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks", self.server.addr.port())
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// A JWT policy named `users` reading this server's keys, plus `routes`.
    fn config(&self, backend: &Backend, policy_extra: &str, routes: &str) -> String {
        config(
            &backend.url(),
            &format!(
                "[auth.users]\ntype = \"jwt\"\nalgorithms = [\"RS256\", \"ES256\"]\n\
                 jwks_url = \"{}\"\njwks_ca = \"{}\"\nissuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\"]\n\
                 leeway = \"5s\"\nforward_claims = {{ sub = \"x-user-id\", tenant = \"x-tenant\" }}\n{policy_extra}\
                 [[routes]]\nname = \"api\"\npath = \"/api\"\nbackend = \"b\"\nauth = \"users\"\n{routes}",
                self.url(),
                self.ca_path
            ),
        )
    }
}

async fn call(gw: &Gw, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(gw.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    send(req.body(empty()).unwrap()).await
}

/// Asserts a 401 whose challenge is `invalid_token` with a description saying `says`.
fn invalid_token(a: &Answer, says: &str) {
    a.problem(401);
    let challenge = a.header("www-authenticate").unwrap();
    assert!(
        challenge
            .starts_with("Bearer realm=\"fngate\", error=\"invalid_token\", error_description=\""),
        "{challenge}"
    );
    assert!(challenge.contains(says), "`{says}` not in {challenge}");
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_from_one_https_jwks_pass_with_claims_forwarded() {
    let (rsa, ec, ed) = (rsa_key(), ec_key("ec-1"), ed_key("ed-1"));
    let jwks = Jwks::start(vec![rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]).await;
    let backend = Backend::echo("b").await;
    let text = jwks.config(&backend, "", "").replace(
        "[\"RS256\", \"ES256\"]",
        "[\"RS256\", \"ES256\", \"EdDSA\"]",
    );
    let gw = Gw::start(&text).await;

    for key in [&rsa, &ec, &ed] {
        let token = sign(key, &claims("alice", json!({})));
        // Spoofed claim headers are removed, whether or not the token holds the claim.
        let a = call(
            &gw,
            "/api",
            Some(&token),
            &[("x-user-id", "mallory"), ("x-tenant", "evil")],
        )
        .await;
        assert_eq!(a.status, 200, "{:?}: {}", key.alg, a.text());
        assert_eq!(a.upstream_header("x-user-id").as_deref(), Some("alice"));
        assert_eq!(a.upstream_header("x-tenant"), None);
    }
    let token = sign(&ec, &claims("bob", json!({ "tenant": "acme" })));
    let a = call(&gw, "/api", Some(&token), &[]).await;
    assert_eq!(a.upstream_header("x-tenant").as_deref(), Some("acme"));
    // A token without kid: accepted, as exactly one RSA key exists.
    let mut no_kid = rsa.clone();
    no_kid.kid = None;
    let a = call(
        &gw,
        "/api",
        Some(&sign(&no_kid, &claims("carol", json!({})))),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn every_bad_token_gets_401_invalid_token_naming_what_was_wrong() {
    let (rsa, ec, ec2) = (rsa_key(), ec_key("ec-1"), ec_key("ec-2"));
    let jwks = Jwks::start(vec![rsa.jwk.clone(), ec.jwk.clone(), ec2.jwk.clone()]).await;
    let backend = Backend::echo("b").await;
    let gw = Gw::start(&jwks.config(&backend, "", "")).await;

    let good = sign(&rsa, &claims("alice", json!({})));
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let forged_payload = B64.encode(claims("mallory", json!({})).to_string());
    let none_header = B64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = B64.encode(claims("alice", json!({})).to_string());
    // Algorithm confusion: HS256 keyed with the RSA public key the gateway trusts.
    let mut confused = SigningKey {
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(rsa.public_pem.as_ref().unwrap().as_bytes()),
        ..rsa.clone()
    };
    confused.kid = Some("rsa-1".into());
    let mut unknown = ec.clone();
    unknown.kid = Some("no-such-kid".into());
    let mut ambiguous = ec.clone();
    ambiguous.kid = None;

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(&rsa, &claims("a", json!({ "exp": now() - 60 }))),
            "expired",
        ),
        (
            "not yet valid",
            sign(&rsa, &claims("a", json!({ "nbf": now() + 600 }))),
            "not valid yet",
        ),
        (
            "wrong issuer",
            sign(&rsa, &claims("a", json!({ "iss": "https://evil/" }))),
            "another issuer",
        ),
        (
            "wrong audience",
            sign(&ec, &claims("a", json!({ "aud": "other" }))),
            "another audience",
        ),
        (
            "bad signature",
            format!("{head}.{forged_payload}.{signature}"),
            "signature does not verify",
        ),
        ("alg none", format!("{none_header}.{payload}."), "malformed"),
        (
            "HS256 with the RSA public key",
            sign(&confused, &claims("a", json!({}))),
            "algorithm is not accepted",
        ),
        (
            "unknown kid",
            sign(&unknown, &claims("a", json!({}))),
            "unknown key",
        ),
        (
            "no kid, two ES256 keys",
            sign(&ambiguous, &claims("a", json!({}))),
            "no kid",
        ),
        ("malformed", "not-a-jwt".to_owned(), "malformed"),
        (
            "no exp",
            sign(&rsa, &json!({ "sub": "a", "iss": ISSUER, "aud": AUDIENCE })),
            "lacks a required claim",
        ),
    ];
    for (what, token, says) in &cases {
        let a = call(&gw, "/api", Some(token), &[]).await;
        assert_eq!(a.status, 401, "{what}: {}", a.text());
        invalid_token(&a, says);
        assert!(
            !a.text().contains(token.as_str()),
            "{what}: the token is not echoed"
        );
    }
    // An empty bearer token is invalid too, not missing.
    let a = call(&gw, "/api", None, &[("authorization", "Bearer ")]).await;
    invalid_token(&a, "empty");
    assert_eq!(backend.count(), 0, "nothing reached the backend");
    let m = gw.metrics().await;
    for reason in [
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "bad_signature",
        "unknown_key",
        "ambiguous_key",
    ] {
        assert!(
            m.contains(&format!(
                "fngate_auth_failures_total{{route=\"api\",reason=\"{reason}\"}} 1"
            )),
            "{reason} counted:\n{m}"
        );
    }
}

#[tokio::test]
async fn no_credentials_get_a_bare_bearer_challenge() {
    let jwks = Jwks::start(vec![rsa_key().jwk]).await;
    let backend = Backend::echo("b").await;
    let gw = Gw::start(&jwks.config(&backend, "", "")).await;
    for extra in [vec![], vec![("authorization", "Basic YWxpY2U6cHc=")]] {
        let a = call(&gw, "/api", None, &extra).await;
        a.problem(401);
        assert_eq!(
            a.header("www-authenticate"),
            Some("Bearer realm=\"fngate\"")
        );
    }
}

#[tokio::test]
async fn a_missing_scope_gets_403_insufficient_scope() {
    let ec = ec_key("ec-1");
    let jwks = Jwks::start(vec![ec.jwk.clone()]).await;
    let backend = Backend::echo("b").await;
    let gw = Gw::start(&jwks.config(
        &backend,
        "scopes = [\"api\"]\n",
        "scopes = [\"orders:read\"]\n",
    ))
    .await;

    let a = call(
        &gw,
        "/api",
        Some(&sign(&ec, &claims("a", json!({ "scope": "api" })))),
        &[],
    )
    .await;
    a.problem(403);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer realm=\"fngate\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"api orders:read\"")
    );
    // `scope` (space separated) and `scp` (an array) both grant scopes.
    for extra in [
        json!({ "scope": "orders:read api" }),
        json!({ "scp": ["api", "orders:read"] }),
    ] {
        let a = call(&gw, "/api", Some(&sign(&ec, &claims("a", extra))), &[]).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
}

#[tokio::test]
async fn a_new_kid_is_fetched_and_a_flood_of_junk_kids_does_not_hammer_the_provider() {
    let (ec, rotated) = (ec_key("ec-1"), ec_key("ec-2"));
    let jwks = Jwks::start(vec![ec.jwk.clone()]).await;
    let backend = Backend::echo("b").await;
    let gw = Gw::start(&jwks.config(&backend, "", "")).await;
    let a = call(&gw, "/api", Some(&sign(&ec, &claims("a", json!({})))), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());

    // The provider rotates: a token with the new kid makes the gateway fetch again.
    jwks.keys.lock().unwrap().push(rotated.jwk.clone());
    let before = jwks.hits();
    let a = call(
        &gw,
        "/api",
        Some(&sign(&rotated, &claims("a", json!({})))),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(jwks.hits(), before + 1);

    // Junk kids right after: refused at once, no more fetches (one per 30 s at most).
    for i in 0..20 {
        let mut junk = ec.clone();
        junk.kid = Some(format!("junk-{i}"));
        let a = call(
            &gw,
            "/api",
            Some(&sign(&junk, &claims("a", json!({})))),
            &[],
        )
        .await;
        invalid_token(&a, "unknown key");
    }
    assert_eq!(jwks.hits(), before + 1, "junk kids fetched nothing");
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_server_is_down() {
    let ec = ec_key("ec-1");
    let jwks = Jwks::start(vec![ec.jwk.clone()]).await;
    let backend = Backend::echo("b").await;
    // No verified-token cache, so the second token is verified with the cached keys.
    let gw = Gw::start(&jwks.config(&backend, "cache_size = 0\n", "")).await;
    let a = call(&gw, "/api", Some(&sign(&ec, &claims("a", json!({})))), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());

    jwks.server.stop();
    let a = call(&gw, "/api", Some(&sign(&ec, &claims("b", json!({})))), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.upstream_header("x-user-id").as_deref(), Some("b"));
    // An unknown kid meanwhile: one failed fetch, then 401, and the old keys still serve.
    let mut unknown = ec.clone();
    unknown.kid = Some("new".into());
    invalid_token(
        &call(
            &gw,
            "/api",
            Some(&sign(&unknown, &claims("c", json!({})))),
            &[],
        )
        .await,
        "unknown key",
    );
    let a = call(&gw, "/api", Some(&sign(&ec, &claims("d", json!({})))), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn discovery_url_leads_to_the_issuers_jwks() {
    let ec = ec_key("ec-1");
    let jwks = Jwks::start(vec![ec.jwk.clone()]).await;
    let backend = Backend::echo("b").await;
    let text = jwks.config(&backend, "", "").replace(
        &format!("jwks_url = \"{}\"", jwks.url()),
        &format!(
            "discovery_url = \"https://localhost:{}/.well-known/openid-configuration\"",
            jwks.server.addr.port()
        ),
    );
    assert!(text.contains("discovery_url"));
    let gw = Gw::start(&text).await;
    let a = call(&gw, "/api", Some(&sign(&ec, &claims("a", json!({})))), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(jwks.hits() >= 1);
}

#[tokio::test]
async fn a_jwks_server_outside_the_configured_ca_is_not_trusted() {
    let ec = ec_key("ec-1");
    let jwks = Jwks::start(vec![ec.jwk.clone()]).await;
    let other = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::echo("b").await;
    let text = jwks
        .config(&backend, "", "")
        .replace(&jwks.ca_path, &other.write(dir.path()));
    let gw = Gw::start(&text).await;
    let a = call(&gw, "/api", Some(&sign(&ec, &claims("a", json!({})))), &[]).await;
    invalid_token(&a, "unknown key");
    assert_eq!(
        jwks.hits(),
        0,
        "the TLS handshake failed before any request"
    );
}

#[tokio::test]
async fn hs256_with_a_secret_from_the_environment_and_pem_public_keys() {
    let backend = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let rsa = rsa_key();
    let pem = dir.path().join("rsa.pem");
    std::fs::write(&pem, rsa.public_pem.as_ref().unwrap()).unwrap();
    let secret = "0123456789abcdef0123456789abcdef-test";
    let text = config(
        &backend.url(),
        &format!(
            "[auth.hmac]\ntype = \"jwt\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_JWT_SECRET\"\n\
             [auth.pem]\ntype = \"jwt\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n\
             [[routes]]\nname = \"h\"\npath = \"/h\"\nbackend = \"b\"\nauth = \"hmac\"\n\
             [[routes]]\nname = \"p\"\npath = \"/p\"\nbackend = \"b\"\nauth = \"pem\"\n",
            pem.display()
        ),
    );
    let env = |name: &str| (name == "TEST_JWT_SECRET").then(|| secret.to_owned());
    let gw = Gw::start_config(fngate::Config::parse(&text, "t.toml", &env).unwrap()).await;
    let hs = SigningKey {
        alg: Algorithm::HS256,
        kid: None,
        key: EncodingKey::from_secret(secret.as_bytes()),
        jwk: Value::Null,
        public_pem: None,
    };
    let token = sign(&hs, &json!({ "sub": "a", "exp": now() + 60 }));
    assert_eq!(call(&gw, "/h", Some(&token), &[]).await.status, 200);
    invalid_token(
        &call(&gw, "/p", Some(&token), &[]).await,
        "algorithm is not accepted",
    );
    let token = sign(&rsa, &json!({ "sub": "a", "exp": now() + 60 }));
    assert_eq!(call(&gw, "/p", Some(&token), &[]).await.status, 200);
    invalid_token(
        &call(&gw, "/h", Some(&token), &[]).await,
        "algorithm is not accepted",
    );
    // The admin API never shows the secret (only the variable's name is in the config).
    let a = send(
        Request::get(format!("http://{}/config", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert!(!a.text().contains(secret), "{}", a.text());
}

const KEY_HASH: &str = "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873"; // demo-key-acme

fn api_key_config(backend: &Backend) -> String {
    config(
        &backend.url(),
        &format!(
            "[auth.partners]\ntype = \"api_key\"\nkeys = [{{ id = \"acme\", sha256 = \"{KEY_HASH}\" }}, {{ id = \"globex\", sha256 = \"{}\" }}]\n\
             [auth.open]\ntype = \"api_key\"\nheader = \"x-key\"\nhide_credentials = false\nkeys = [{{ id = \"acme\", sha256 = \"{KEY_HASH}\" }}]\n\
             [[routes]]\nname = \"p\"\npath = \"/p\"\nbackend = \"b\"\nauth = \"partners\"\n\
             [[routes]]\nname = \"o\"\npath = \"/o\"\nbackend = \"b\"\nauth = \"open\"\n",
            "0".repeat(64)
        ),
    )
}

#[tokio::test]
async fn api_keys_name_the_consumer_and_stay_away_from_the_backend() {
    let backend = Backend::echo("b").await;
    let gw = Gw::start(&api_key_config(&backend)).await;

    let a = call(
        &gw,
        "/p",
        None,
        &[("x-api-key", "demo-key-acme"), ("x-consumer-id", "spoofed")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.upstream_header("x-consumer-id").as_deref(), Some("acme"));
    assert_eq!(a.upstream_header("x-api-key"), None, "hide_credentials");
    let a = call(&gw, "/o", None, &[("x-key", "demo-key-acme")]).await;
    assert_eq!(a.upstream_header("x-key").as_deref(), Some("demo-key-acme"));

    for extra in [
        vec![],
        vec![("x-api-key", "wrong")],
        vec![("x-api-key", "")],
    ] {
        let a = call(&gw, "/p", None, &extra).await;
        a.problem(401);
        assert_eq!(
            a.header("www-authenticate"),
            Some("Key realm=\"fngate\""),
            "{extra:?}"
        );
    }
    assert_eq!(backend.count(), 2);
}

#[tokio::test]
async fn the_admin_api_hides_key_hashes_and_keeps_policies_in_use() {
    let backend = Backend::echo("b").await;
    let gw = Gw::start(&api_key_config(&backend)).await;
    let admin = |path: &str| format!("http://{}{path}", gw.admin);
    let a = send(Request::get(admin("/auth/partners")).body(empty()).unwrap()).await;
    assert_eq!(a.status, 200);
    assert!(!a.text().contains(KEY_HASH), "{}", a.text());
    assert_eq!(a.json()["keys"][0]["sha256"], "<hidden>");
    let a = send(Request::get(admin("/config")).body(empty()).unwrap()).await;
    assert!(!a.text().contains(KEY_HASH));
    let a = send(
        Request::delete(admin("/auth/partners"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(a.text().contains("used by routes: p"), "{}", a.text());
}

#[tokio::test]
async fn claim_keyed_limits_share_a_bucket_per_claim_value() {
    let ec = ec_key("ec-1");
    let jwks = Jwks::start(vec![ec.jwk.clone()]).await;
    let backend = Backend::echo("b").await;
    let text = jwks.config(&backend, "", "rate_limit = [\"per_tenant\"]\n").replace(
        "[[routes]]",
        "[rate_limits.per_tenant]\nrequests = 2\nper = \"1m\"\nkey = \"claim:tenant\"\n[[routes]]",
    );
    let gw = Gw::start(&text).await;
    let token = |sub: &str, tenant: &str| sign(&ec, &claims(sub, json!({ "tenant": tenant })));
    assert_eq!(
        call(&gw, "/api", Some(&token("a", "acme")), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        call(&gw, "/api", Some(&token("b", "acme")), &[])
            .await
            .status,
        200
    );
    call(&gw, "/api", Some(&token("c", "acme")), &[])
        .await
        .problem(429);
    assert_eq!(
        call(&gw, "/api", Some(&token("a", "globex")), &[])
            .await
            .status,
        200
    );
}
