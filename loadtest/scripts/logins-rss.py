#!/usr/bin/env python3
# RSS of a viche build under repeated logins (docs/benchmarks.md, "Memory
# under logins"): starts BINARY on port 18299 with a fresh data dir,
# registers one user, logs in N times, 10 at a time, and prints VmRSS.
#   loadtest/scripts/logins-rss.py target/release/viche 200
import json, sys, subprocess, time, urllib.request, concurrent.futures, tempfile, os
binary, n = sys.argv[1], int(sys.argv[2])
d = tempfile.mkdtemp()
p = subprocess.Popen([binary, "--data-dir", d, "--listen", "127.0.0.1:18299", "--jwt-secret", "benchsecret-0123456789"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1]) // 1024
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:18299" + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    return urllib.request.urlopen(req).status
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:18299/healthz"); break
    except Exception: time.sleep(0.1)
post("/api/register", {"username": "alice", "password": "correct horse battery"})
r0 = rss(); out = [f"after register {r0}"]
with concurrent.futures.ThreadPoolExecutor(10) as ex:
    for i in range(0, n, 10):
        list(ex.map(lambda _: post("/api/login", {"username": "alice", "password": "correct horse battery"}), range(10)))
        if (i + 10) % (n // 5) == 0: out.append(f"{i+10}: {rss()}")
print(binary, "RSS MiB:", ", ".join(out))
p.kill()
