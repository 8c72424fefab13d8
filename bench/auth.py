#!/usr/bin/env python3
"""JWT overhead: a plain route against the same route behind a JWT policy,
RS256 and ES256, with the verified-token cache on and off, in one interleaved
run. Every request of every run carries the same Authorization header (a hot
token), so the runs differ only in fngate's work. Target: with the cache,
>= 0.9x the plain route.

    python3 bench/auth.py              # 3 rounds x 64 connections x 5 s

The ES256 token comes from `fngate token` (the demo key in certs/); the RS256
key is made here with openssl and the token signed with `openssl dgst`.
"""

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

ISSUER = "https://demo.fngate.invalid/"
AUDIENCE = "fngate-demo"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rs256_token(key_pem):
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = {"sub": "bench", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600}
    payload = b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_pem], input=signing_input,
                         capture_output=True, check=True).stdout
    return f"{header}.{payload}.{b64(sig)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    run.ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=run.ROOT, check=True)
    fngate = os.path.join(run.ROOT, "target/release/fngate")
    work = tempfile.mkdtemp(prefix="fngate-auth-")
    backend, port, admin = (run.free_port() for _ in range(3))
    rsa_key, rsa_pub = os.path.join(work, "rsa.pem"), os.path.join(work, "rsa.pub.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa_key],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", rsa_key, "-pubout", "-out", rsa_pub], check=True, capture_output=True)
    tokens = {
        "es256": subprocess.run([fngate, "token", "--sub", "bench"], capture_output=True, text=True, check=True).stdout.strip(),
        "rs256": rs256_token(rsa_key),
    }
    jwks = os.path.join(run.ROOT, "certs/demo-jwks.json")
    policy = 'issuer = "%s"\naudience = ["%s"]\n' % (ISSUER, AUDIENCE)
    procs = []
    try:
        procs.append(run.start_nginx(work, "backend", "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend))
        config = os.path.join(work, "routes.toml")
        with open(config, "w") as f:
            f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n[admin]\nlisten = "127.0.0.1:%d"\n'
                    '[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n' % (port, admin, backend))
            for name, alg, source in (("es", "ES256", 'jwks_file = "%s"' % jwks), ("rs", "RS256", 'public_key_file = "%s"' % rsa_pub)):
                for suffix, extra in (("", ""), ("-nocache", "cache_size = 0\n")):
                    f.write('[auth.%s%s]\ntype = "jwt"\nalgorithms = ["%s"]\n%s\n%s%s' % (name, suffix, alg, source, policy, extra))
                    f.write('[[routes]]\nname = "%s%s"\npath = "/%s%s"\nbackend = "fn"\nauth = "%s%s"\n' % (name, suffix, name, suffix, name, suffix))
            f.write('[[routes]]\nname = "plain"\npath = "/plain"\nbackend = "fn"\n')
        gw = subprocess.Popen([fngate, "--config", config], env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL)
        procs.append(gw)
        for p in (backend, port):
            run.wait_port(p)
        runs = [("plain", "es256"), ("es", "es256"), ("es-nocache", "es256"), ("rs", "rs256"), ("rs-nocache", "rs256")]
        results = {}
        for rnd in range(args.rounds):
            for route, token in runs:
                cmd = ["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}s", "--latency",
                       "-H", f"authorization: Bearer {tokens[token]}", f"http://127.0.0.1:{port}/{route}"]
                before = run.cpu_ticks(gw.pid)
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                ticks = run.cpu_ticks(gw.pid) - before
                r = run.parse_wrk(out)
                r["cpu_us"] = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(r["total"], 1)
                results.setdefault(route, []).append(r)
                print(f"round {rnd + 1} {route:<11} {r['rps']:>8.0f} req/s  p99 {r['p99']:.3f} ms  "
                      f"{r['cpu_us']:.1f} µs CPU/req  non-2xx {r['non2xx']}", file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    plain = statistics.median(r["rps"] for r in results["plain"])
    print(f"\nfngate, one route five ways; wrk -t1 -c{args.conns}, {args.duration}s runs, medians of {args.rounds} interleaved rounds\n")
    print("| route | req/s | p99 ms | fngate CPU µs/req | vs plain | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    labels = {"plain": "no auth", "es": "JWT ES256, cache on", "es-nocache": "JWT ES256, cache off",
              "rs": "JWT RS256, cache on", "rs-nocache": "JWT RS256, cache off"}
    for route, label in labels.items():
        rps = statistics.median(r["rps"] for r in results[route])
        p99 = statistics.median(r["p99"] for r in results[route])
        cpu = statistics.median(r["cpu_us"] for r in results[route])
        bad = sum(r["non2xx"] for r in results[route])
        print(f"| {label} | {rps:.0f} | {p99:.3f} | {cpu:.1f} | {rps / plain:.2f}× | {bad} |")


if __name__ == "__main__":
    main()
