//! Every kind of config error is reported with its key and line:col, all at once.

use fngate::config::{Config, ConfigError};

fn errors(text: &str) -> Vec<ConfigError> {
    let env = |name: &str| (name == "SET_VAR").then(|| "value".to_owned());
    match Config::parse(text, "routes.toml", &env) {
        Ok(_) => panic!("config should be refused:\n{text}"),
        Err(e) => e.0,
    }
}

/// Asserts one error mentions `key`, stands on `line`, and says `says`.
fn has(errors: &[ConfigError], line: usize, key: &str, says: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.line == line && e.key.contains(key) && e.message.contains(says)),
        "no error at line {line} for `{key}` saying `{says}` in:\n{}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const BACKEND: &str = "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n";

#[test]
fn the_shipped_routes_toml_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.routes.len() >= 5);
}

#[test]
fn invalid_toml_names_its_position() {
    let e = errors("[server]\nlisten = \"127.0.0.1:80\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 2);
    assert!(e[0].message.contains("invalid TOML"), "{}", e[0]);
}

#[test]
fn unknown_keys_are_reported_everywhere_at_once() {
    let e = errors(&format!(
        "colour = 1\n[server]\nlisen = \"x\"\n{BACKEND}retry = 2\n[[routes]]\nname = \"r\"\npath = \"/\"\nbackend = \"b\"\nrequest_headers = {{ sett = {{}} }}\n"
    ));
    has(&e, 1, "colour", "unknown key");
    has(&e, 3, "server.lisen", "unknown key");
    has(&e, 6, "backends.b.retry", "unknown key");
    has(&e, 11, "routes[r].request_headers.sett", "unknown key");
}

#[test]
fn bad_values_name_key_and_line() {
    let e = errors(
        "[server]\nlisten = \"localhost\"\nmax_body = \"ten\"\nidle_timeout = \"soon\"\nworkers = -1\n\
         [backends.b]\nurls = [\"not a url\", \"ftp://x\"]\n[backends.empty]\nurls = []\n",
    );
    has(&e, 2, "server.listen", "not an address");
    has(&e, 3, "server.max_body", "not a size");
    has(&e, 4, "server.idle_timeout", "not a duration");
    has(&e, 5, "server.workers", "integer");
    has(&e, 7, "backends.b.urls", "not a URL");
    has(&e, 7, "backends.b.urls", "scheme must be http");
    has(&e, 9, "backends.empty.urls", "empty pool");
}

#[test]
fn references_duplicates_and_templates_are_checked() {
    let e = errors(&format!(
        "{BACKEND}\
[[routes]]
name = \"a\"
path = \"/orders/{{id}}\"
methods = [\"GET\"]
backend = \"b\"
[[routes]]
name = \"b\"
path = \"/orders/{{order}}\"
methods = [\"GET\", \"POST\"]
backend = \"nope\"
[[routes]]
name = \"a\"
path = \"/x/{{id}}\"
backend = \"b\"
rewrite = \"/y/{{user}}\"
[[routes]]
name = \"c\"
path = \"/orders/{{id}}\"
methods = [\"GET\"]
backend = \"b\"
strip_prefix = \"/other\"
"
    ));
    has(&e, 12, "routes[b].backend", "unknown backend `nope`");
    has(&e, 13, "routes[a].name", "used twice");
    has(&e, 17, "routes[a].rewrite", "`{user}` has no source");
    has(
        &e,
        18,
        "routes[c]",
        "same host, path and method as route `a`",
    );
    has(&e, 23, "routes[c].strip_prefix", "not a prefix");
}

#[test]
fn names_env_vars_and_unsupported_sections() {
    let e = errors(&format!(
        "[backends.Bad_Name]\nurls = [\"http://x\"]\n{BACKEND}headers = {{ k = \"${{UNSET_VAR}}\", ok = \"${{SET_VAR}}\" }}\n[[schedules]]\nname = \"nightly\"\n"
    ));
    has(&e, 1, "backends.Bad_Name", "not a valid name");
    has(&e, 5, "backends.b.headers.k", "UNSET_VAR is not set");
    has(&e, 6, "schedules[nightly].cron", "missing");
    has(&e, 6, "schedules[nightly].backend", "missing");
    assert_eq!(e.len(), 4, "SET_VAR interpolates without error");
}

#[test]
fn a_strip_prefix_longer_than_the_path_is_refused_not_a_panic() {
    // Found by the admin API fuzz: the boundary check sliced past the path's end.
    let e = errors(&format!(
        "{BACKEND}[[routes]]\nname = \"r\"\npath = \"/audit\"\nbackend = \"b\"\nstrip_prefix = \"/legacy\"\n"
    ));
    has(&e, 7, "routes[r].strip_prefix", "not a prefix");
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let e = errors("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_env = \"NO_SUCH_TOKEN\"\n");
    has(&e, 2, "admin.listen", "not loopback");
}

#[test]
fn errors_render_as_file_line_col_key_message() {
    let e = errors("[server]\n  workers = \"two\"\n");
    assert_eq!(
        e[0].to_string(),
        "routes.toml:2:13: server.workers: expected an integer"
    );
}

#[test]
fn auth_policies_refuse_unsafe_algorithms_and_key_sources() {
    let e = errors(concat!(
        "[auth.a]\n",
        "type = \"jwt\"\n",
        "algorithms = [\"none\", \"RS256\"]\n",
        "jwks_url = \"https://idp.example/jwks\"\n",
        "[auth.b]\n",
        "type = \"jwt\"\n",
        "algorithms = [\"HS256\", \"RS256\"]\n",
        "secret_env = \"SET_VAR\"\n",
        "[auth.c]\n",
        "type = \"jwt\"\n",
        "algorithms = [\"RS256\"]\n",
        "jwks_url = \"http://idp.example/jwks\"\n",
        "[auth.d]\n",
        "type = \"jwt\"\n",
        "algorithms = [\"RS256\"]\n",
        "jwks_file = \"no/such/jwks.json\"\n",
        "public_key_file = \"no/such/key.pem\"\n",
        "[auth.e]\n",
        "type = \"jwt\"\n",
        "algorithms = [\"HS256\"]\n",
        "secret_env = \"SET_VAR\"\n",
        "[auth.f]\n",
        "type = \"api_key\"\n",
        "keys = [{ id = \"acme\", sha256 = \"abc\" }]\n",
    ));
    has(
        &e,
        3,
        "auth.a.algorithms",
        "`none` (unsigned tokens) is never accepted",
    );
    has(&e, 7, "auth.b.algorithms", "cannot be mixed");
    has(&e, 12, "auth.c.jwks_url", "not an https:// URL");
    has(&e, 13, "auth.d", "exactly one key source");
    has(&e, 16, "auth.d.jwks_file", "cannot read");
    has(&e, 21, "auth.e.secret_env", "shorter than 32 bytes");
    has(&e, 24, "auth.f.keys[0].sha256", "64 hex digits");
}

#[test]
fn routes_name_known_auth_policies_and_scopes_need_jwt() {
    let sha = "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873";
    let e = errors(&format!(
        "{BACKEND}[auth.keys]\ntype = \"api_key\"\nkeys = [{{ id = \"acme\", sha256 = \"{sha}\" }}]\n\
         [[routes]]\nname = \"a\"\npath = \"/a\"\nbackend = \"b\"\nauth = \"nobody\"\n\
         [[routes]]\nname = \"b\"\npath = \"/b\"\nbackend = \"b\"\nauth = \"keys\"\nscopes = [\"x\"]\n\
         [[routes]]\nname = \"c\"\npath = \"/c\"\nbackend = \"b\"\nscopes = [\"x\"]\n"
    ));
    has(&e, 10, "routes[a].auth", "unknown auth policy `nobody`");
    has(&e, 16, "routes[b].scopes", "API keys carry no scopes");
    has(&e, 21, "routes[c].scopes", "need a JWT `auth` policy");
    assert_eq!(e.len(), 3);
}

#[test]
fn tls_and_upstream_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap(),
        rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).unwrap(),
    );
    let cert = dir.path().join("a.pem");
    let key = dir.path().join("b-key.pem");
    std::fs::write(&cert, a.cert.pem()).unwrap();
    std::fs::write(&key, b.signing_key.serialize_pem()).unwrap();
    let e = errors(&format!(
        "[server.tls]\nlisten = \"127.0.0.1:8443\"\ncerts = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [backends.b]\nurls = [\"http://127.0.0.1:9\"]\nprotocol = \"h3\"\nca = \"{}\"\n",
        cert.display(),
        key.display(),
        cert.display()
    ));
    has(&e, 3, "server.tls.certs[0]", "b-key.pem");
    has(&e, 6, "backends.b.protocol", "expected \"http1\" or \"h2\"");
    has(&e, 7, "backends.b.ca", "only applies to https:// urls");
}

#[test]
fn telemetry_settings_are_checked() {
    let e = errors(&format!(
        "{BACKEND}[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\nsample_ratio = 1.5\nexport_timeout = \"30s\"\nheaders = {{ \"bad name\" = \"x\" }}\nservice = \"typo\"\n"
    ));
    has(
        &e,
        4,
        "telemetry.otlp_endpoint",
        "not an http:// or https:// URL",
    );
    has(&e, 5, "telemetry.sample_ratio", "from 0.0 to 1.0");
    has(&e, 6, "telemetry.export_timeout", "at most 10s");
    has(
        &e,
        7,
        "telemetry.headers.bad name",
        "not a valid header name",
    );
    has(&e, 8, "telemetry.service", "unknown key");
    assert_eq!(e.len(), 5, "{e:?}");
    // Without an endpoint nothing is exported; the rest is still checked.
    let ok = Config::parse(
        &format!("{BACKEND}[telemetry]\nsample_ratio = 0.25\n"),
        "routes.toml",
        &|_| None,
    )
    .unwrap();
    assert!(ok.telemetry.is_none());
    let ok = Config::parse(
        &format!("{BACKEND}[telemetry]\notlp_endpoint = \"https://otel.example:4318/base/\"\nsample_ratio = 1\n"),
        "routes.toml",
        &|_| None,
    )
    .unwrap();
    let t = ok.telemetry.unwrap();
    assert_eq!(t.traces_url, "https://otel.example:4318/base/v1/traces");
    assert_eq!(t.sample_ratio, 1.0);
    assert_eq!(&*t.service_name, "fngate");
}

#[test]
fn store_settings_are_checked() {
    // BACKEND is two lines; [store] is line 3.
    let both = errors(&format!(
        "{BACKEND}[store]\npath = \"x.db\"\nurl = \"redis://127.0.0.1:6379/0\"\n"
    ));
    has(&both, 5, "store.url", "not both");
    let e = errors(&format!(
        "{BACKEND}[store]\nurl = \"http://127.0.0.1:6379\"\ndurability = \"disk\"\nrate_limits_on_error = \"maybe\"\n"
    ));
    has(&e, 4, "store.url", "redis:// or rediss://");
    has(
        &e,
        5,
        "store.durability",
        "not one of \"primary\", \"replica\"",
    );
    has(
        &e,
        6,
        "store.rate_limits_on_error",
        "not one of \"local\", \"open\", \"closed\"",
    );
    let embedded = errors(&format!("{BACKEND}[store]\ndurability = \"replica\"\n"));
    has(&embedded, 4, "store.durability", "Redis store only");
    let timeouts = errors(&format!(
        "{BACKEND}[store]\nurl = \"redis://127.0.0.1:6379/0\"\nrate_limit_timeout = \"0s\"\n"
    ));
    has(
        &timeouts,
        5,
        "store.rate_limit_timeout",
        "more than 0 and at most 10s",
    );
    let words = errors(&format!(
        "{BACKEND}[store]\nurl = \"redis://127.0.0.1:6379/0\"\nrate_limit_timeout = \"soon\"\n"
    ));
    has(&words, 5, "store.rate_limit_timeout", "not a duration");
    let local = errors(&format!("{BACKEND}[store]\nrate_limit_timeout = \"1s\"\n"));
    has(&local, 4, "store.rate_limit_timeout", "Redis store only");
    let plain_ca = errors(&format!(
        "{BACKEND}[store]\nurl = \"redis://127.0.0.1:6379/0\"\nca = \"Cargo.toml\"\n"
    ));
    has(&plain_ca, 5, "store.ca", "not a PEM file");
    has(&plain_ca, 5, "store.ca", "rediss:// url only");
    let bad_db = errors(&format!(
        "{BACKEND}[store]\nurl = \"redis://127.0.0.1:6379/notadb\"\n"
    ));
    has(&bad_db, 4, "store.url", "not a Redis URL");
    let ok = Config::parse(
        &format!("{BACKEND}[store]\nurl = \"rediss://:secret@redis.example:6380/2\"\ndurability = \"replica\"\nrate_limits_on_error = \"closed\"\nrate_limit_timeout = \"120ms\"\n"),
        "routes.toml",
        &|_| None,
    )
    .unwrap();
    assert_eq!(ok.store.durability, fngate::config::Durability::Replica);
    assert_eq!(
        ok.store.rate_limits_on_error,
        fngate::config::OnError::Closed
    );
    assert_eq!(
        ok.store.rate_limit_timeout,
        std::time::Duration::from_millis(120)
    );
    // Logs and errors never show the password.
    assert_eq!(ok.store.location(), "rediss://:***@redis.example:6380/2");
}
