#!/usr/bin/env python3
"""A current ClickHouse engine (chDB, ClickHouse 26.x in-process) behind the
subset of ClickHouse's HTTP interface that this project uses. A TEST ENGINE:
it lets the local stack and CI run every suite on a current ClickHouse where
no server binary can be installed. Production runs a real ClickHouse server.

What it answers (the semantics of ClickHouse's own HTTP interface):
  GET  /ping                      -> 200 "Ok.\n"
  GET  /?query=SQL                -> the result (TabSeparated unless the SQL says FORMAT)
  POST / with SQL in the body     -> the result
  POST /?query=INSERT ... FORMAT F with data in the body (plain or chunked)
                                  -> the rows inserted as one INSERT (F: RowBinary, TSV, ...)
  URL parameters: `database` (the default database of the query), `default_format`,
  `query_id` (ignored), `user`/`password` (also the headers X-ClickHouse-User and
  X-ClickHouse-Key), every other parameter is a setting for this query alone
  (`readonly`, `max_execution_time`, `async_insert`, ...).
  Errors: HTTP 500 with the engine's text and `X-ClickHouse-Exception-Code`.

Users: only `default`, with the password in the environment variable
CHDB_HTTP_PASSWORD (empty: none), as the local 18.16 server has. Listens on
loopback only.

Concurrency: a pool of engine sessions on one data directory (the engine is
shared, so every session sees every committed part at once); a request takes
a session for itself, applies its settings and database, runs, and resets
them. Requests with `readonly` run on sessions that were made read-only
when they were opened (`readonly` cannot be lifted once set), so a read-only
request can never write.

Usage: server.py --data DIR [--listen 127.0.0.1:8124] [--sessions 8]
"""

import argparse
import hmac
import os
import queue
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from chdb import session as chdb_session

# URL parameters that are not settings
NOT_SETTINGS = {"query", "database", "default_format", "query_id", "user", "password", "compress", "decompress", "session_id"}
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INSERT_WITH_FORMAT = re.compile(r"^\s*(INSERT\s+INTO\s.*?)\s+FORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
ERROR_CODE = re.compile(r"Code:\s*(\d+)")
MAX_BODY = 1 << 30


class EngineError(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code
        self.text = text


def engine_error(e):
    text = str(e)
    m = ERROR_CODE.search(text)
    return EngineError(int(m.group(1)) if m else 1001, text)


def literal(value):
    """A setting's value as SQL: numbers as they are, anything else as a quoted string."""
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Pool:
    def __init__(self, data, size, readonly):
        self.sessions = queue.Queue()
        for _ in range(size):
            s = chdb_session.Session(data)
            if readonly:
                s.query("SET readonly = 2")
            self.sessions.put(s)

    def run(self, fn):
        s = self.sessions.get()
        try:
            return fn(s)
        finally:
            self.sessions.put(s)


class Engine:
    def __init__(self, data, size):
        self.data = data
        self.writers = Pool(data, size, readonly=False)
        self.readers = Pool(data, max(2, size // 2), readonly=True)

    def execute(self, sql, data, database, default_format, settings):
        readonly = settings.pop("readonly", "0") not in ("0", "")
        pool = self.readers if readonly else self.writers
        return pool.run(lambda s: self._on(s, sql, data, database, default_format, settings))

    def _on(self, s, sql, data, database, default_format, settings):
        applied = []
        try:
            for name, value in settings.items():
                if not SETTING_NAME.match(name):
                    raise EngineError(115, f"Code: 115. DB::Exception: Unknown setting {name!r}. (UNKNOWN_SETTING)")
                q(s, f"SET {name} = {literal(value)}")
                applied.append(name)
            if database:
                if not SETTING_NAME.match(database):
                    raise EngineError(81, f"Code: 81. DB::Exception: Database {database!r} does not exist. (UNKNOWN_DATABASE)")
                q(s, f"USE {database}")
            m = INSERT_WITH_FORMAT.match(sql)
            if m:
                data = data or b""
                try:
                    ins = s._conn.send_insert(m.group(1), m.group(2))
                    try:
                        ins.append(data)
                        ins.finish()
                    except BaseException:
                        ins.cancel()
                        raise
                except EngineError:
                    raise
                except Exception as e:
                    err = engine_error(e)
                    # a server answers an INSERT with an empty body with no rows and success
                    if err.code == 108 and not data:
                        return b""
                    raise err from None
                return b""
            if data:
                sql = sql + "\n" + data.decode("utf-8", "replace")
            return q(s, sql, default_format or "TabSeparated")
        finally:
            # leave the session as it was for the next request
            for name in applied:
                try:
                    q(s, f"SET {name} = DEFAULT")
                except EngineError:
                    pass
            if database:
                try:
                    q(s, "USE default")
                except EngineError:
                    pass


def q(s, sql, fmt="TabSeparated"):
    try:
        return s.query(sql, fmt).bytes()
    except Exception as e:
        raise engine_error(e) from None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chdb-http"
    # as a ClickHouse server: TCP_NODELAY. With Nagle's algorithm on, the
    # body written after the headers waited for the client's delayed ACK,
    # about 40 ms on every answer (measured: each query of a reconciliation
    # 40 to 50 ms apart, and 48 ms for a bench baseline that takes 5)
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet: errors are answered to the client
        pass

    def reply(self, status, body, code=None, ctype="text/plain; charset=UTF-8"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if code is not None:
            self.send_header("X-ClickHouse-Exception-Code", str(code))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise EngineError(1002, "request body too large")
                out += self.rfile.read(size)
                self.rfile.readline(16)
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise EngineError(1002, "request body too large")
        return self.rfile.read(n) if n else b""

    def authenticated(self, params):
        user = self.headers.get("X-ClickHouse-User") or params.get("user") or "default"
        key = self.headers.get("X-ClickHouse-Key") or params.get("password") or ""
        want = os.environ.get("CHDB_HTTP_PASSWORD", "")
        return user == "default" and hmac.compare_digest(key.encode(), want.encode())

    def handle_request(self, post):
        url = urlsplit(self.path)
        if url.path in ("/ping", "/ping/"):
            self.reply(200, b"Ok.\n")
            return
        if url.path not in ("/", ""):
            self.reply(404, b"There is no handle " + url.path.encode() + b"\n", code=0)
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            body = self.read_body() if post else b""
        except (EngineError, ValueError) as e:
            self.reply(400, f"bad request body: {e}\n".encode(), code=1002)
            self.close_connection = True
            return
        if not self.authenticated(params):
            self.reply(403, b"Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)\n", code=516)
            return
        sql = params.get("query")
        data = None
        if sql is None:
            sql = body.decode("utf-8", "replace")
        elif body:
            data = body
        if not sql.strip():
            self.reply(400, b"Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)\n", code=62)
            return
        settings = {k: v for k, v in params.items() if k not in NOT_SETTINGS}
        try:
            out = self.server.engine.execute(sql, data, params.get("database"), params.get("default_format"), settings)
        except EngineError as e:
            self.reply(500, (e.text.rstrip("\n") + "\n").encode(), code=e.code)
            return
        self.reply(200, out)

    def do_GET(self):
        self.handle_request(post=False)

    def do_POST(self):
        self.handle_request(post=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="data directory (created if missing)")
    ap.add_argument("--listen", default="127.0.0.1:8124", help="loopback address:port")
    ap.add_argument("--sessions", type=int, default=8, help="engine sessions for writers (readers get half)")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("chdb-http listens on loopback only")
    os.makedirs(a.data, exist_ok=True)
    engine = Engine(a.data, a.sessions)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    server.engine = engine
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    version = q(engine.writers.sessions.queue[0], "SELECT version()").decode().strip()
    print(f"chdb-http: ClickHouse {version} (chDB) on http://{a.listen}, data in {a.data}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
