"""pytest plugin: hold forge test resources for the whole test session.

The plugin opens forge's lease WebSocket (docs/leases.md) when the session
starts, waits in the queue for the resources, exposes them to the tests as
the ``forge_resources`` fixture, and gives them back when the session ends.
The lease lives as long as the plugin's session with the server: if pytest
dies, however it dies, the server takes the resources back. A broken
connection (network cut, server restart) is resumed within the session's
grace, keeping the lease (protocol version 2; a line on stderr says so).
If the lease is lost (the grace passed, an operator revoked it), the
session is interrupted at once and pytest exits with status 75, because
the resources may already belong to someone else.

Configuration (command-line options win over environment variables):

  --forge-lease POOL[:N]   (repeatable)  FORGE_LEASE_POOLS="dut ports:2"
  --forge-lease-label k=v  (repeatable)  FORGE_LEASE_LABELS="arch=arm64"
  --forge-server URL                     FORGE_SERVER (default http://127.0.0.1:8080)
  --forge-lease-wait SECONDS             FORGE_LEASE_WAIT (default: wait forever)

With no pool configured, the plugin uses the grant of an enclosing
``forge lease POOL -- pytest`` (the FORGE_LEASE_JSON variable), so the same
tests run either way; with neither, tests using the fixture are skipped.

Needs Python's ``websockets`` package (Debian: python3-websockets).
"""

import asyncio
import getpass
import json
import os
import signal
import socket
import sys
import threading
import urllib.parse

import pytest

DEFAULT_SERVER = "http://127.0.0.1:8080"
LEASE_PATH = "/api/v1/leases/ws"
EXIT_LEASE_LOST = 75  # as forge lease's own status for a lost lease


class LeaseError(Exception):
    """The server refused the request or could not be reached."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def websocket_url(server):
    """The lease WebSocket URL of a forge server address (http -> ws)."""
    if "://" not in server:
        server = "http://" + server
    u = urllib.parse.urlsplit(server)
    scheme = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}.get(u.scheme)
    if scheme is None or not u.netloc:
        raise LeaseError("invalid", f"forge server address {server!r} is not an http(s) or ws(s) URL")
    path = u.path
    if not path.endswith(LEASE_PATH):
        path = path.rstrip("/") + LEASE_PATH
    return urllib.parse.urlunsplit((scheme, u.netloc, path, u.query, ""))


def parse_pools(specs, labels):
    """Turn POOL[:N] strings and k=v labels into protocol requests."""
    requests = []
    for spec in specs:
        pool, _, count = spec.partition(":")
        if not pool:
            raise LeaseError("invalid", f"bad pool {spec!r}: want POOL or POOL:N")
        try:
            n = int(count) if count else 1
        except ValueError:
            n = 0
        if n < 1:
            raise LeaseError("invalid", f"bad count in {spec!r}: want a whole number of at least 1")
        req = {"pool": pool, "count": n}
        if labels:
            req["labels"] = dict(labels)
        requests.append(req)
    return requests


def env_name(pool):
    """FORGE_LEASE_<POOL>: upper-cased, every non-alphanumeric as "_"."""
    return "FORGE_LEASE_" + "".join(c if c.isascii() and c.isalnum() else "_" for c in pool).upper()


class Lease:
    """One lease held on its own connection, served by a background thread.

    acquire() blocks until the grant; lost is set (and on_lost called, from
    the background thread) when the lease ends other than by release().
    """

    def __init__(self, server, requests, holder, wait=None, on_queued=None, on_lost=None, on_note=None):
        self.url = websocket_url(server)
        self.requests = requests
        self.holder = holder
        self.wait = wait
        self.on_queued = on_queued
        self.on_lost = on_lost
        self.on_note = on_note  # told of reconnections
        self.session = None  # the session message: id, secret, grace
        self.granted = None  # the granted message
        self.lost = threading.Event()
        self.lost_reason = None
        self._ready = threading.Event()
        self._error = None
        self._releasing = False
        self._loop = asyncio.new_event_loop()
        self._ws = None
        self._released = None
        self._thread = threading.Thread(target=self._run, name="forge-lease", daemon=True)

    @property
    def resources(self):
        """Pool name -> list of {"id", "attributes", "labels"}."""
        return self.granted.get("resources", {}) if self.granted else {}

    @property
    def lease_id(self):
        return self.granted["lease"] if self.granted else None

    def env(self):
        """The variables forge lease would set for this grant."""
        env = {env_name(p): ",".join(r["id"] for r in rs) for p, rs in self.resources.items()}
        env["FORGE_LEASE_JSON"] = json.dumps(self.granted)
        return env

    def acquire(self):
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join(5)
            raise self._error
        return self.granted

    def release(self, timeout=5.0, broken=None):
        """Give the resources back (idempotent) and stop the thread. With
        broken (a reason), report them broken: the server takes them out of
        service until their pool's health check passes or an operator
        enables them."""
        if not self._thread.is_alive():
            return
        self._releasing = True
        fut = asyncio.run_coroutine_threadsafe(self._release(broken), self._loop)
        try:
            fut.result(timeout)
        except Exception:
            pass  # closing the connection releases everything anyway
        self._thread.join(timeout)

    def _run(self):
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:  # a bug here must not leave acquire() waiting
            if not self._ready.is_set():
                self._fail(LeaseError("internal", f"lease client failed: {e!r}"))
        finally:
            self._loop.close()

    async def _connect(self, websockets):
        """Open a connection speaking protocol version 2 and read its hello."""
        ws = await websockets.connect(self.url + "?version=2", max_size=16 << 20, compression=None,
                                      ping_interval=5, ping_timeout=10, open_timeout=10)
        hello = json.loads(await ws.recv())
        if hello.get("type") != "hello":
            await ws.close()
            raise LeaseError("unavailable", f"{self.url} does not speak the lease protocol")
        return ws, hello

    async def _main(self):
        try:
            import websockets  # imported here so that --help works without it
        except ImportError:
            self._fail(LeaseError("unavailable", "the Python websockets package is missing "
                                  "(Debian: apt-get install python3-websockets; else pip install websockets)"))
            return
        try:
            ws, hello = await self._connect(websockets)
        except LeaseError as e:
            self._fail(e)
            return
        except Exception as e:  # refused, DNS, HTTP 404, ...
            self._fail(LeaseError("unavailable", f"cannot reach the lease server at {self.url}: {e}"))
            return
        self._ws = ws
        try:
            if hello.get("version", 1) >= 2:
                # A resumable session: a broken connection is resumed
                # within its grace, keeping the lease and the queue place.
                await ws.send(json.dumps({"type": "session"}))
                m = json.loads(await ws.recv())
                if m.get("type") == "session":
                    self.session = m
            await ws.send(json.dumps(self._acquire_msg()))
            while True:
                try:
                    done = await self._serve(ws)
                except LeaseError:
                    raise
                except Exception as e:  # connection closed or broken
                    done, cause = False, e
                else:
                    cause = ConnectionError(f"the lease server closed the connection ({ws.close_code})")
                if done or self._releasing:
                    return
                if self.session is None:
                    raise cause
                ws = await self._resume(websockets, cause)
                self._ws = ws
        except LeaseError as e:
            if self.granted is None:
                self._fail(e)
            else:
                self._lose(str(e))
        except Exception as e:  # connection closed or broken
            if self.granted is None:
                self._fail(LeaseError("unavailable", f"connection to the lease server lost: {e}"))
            elif not self._releasing:
                self._lose(f"connection to the lease server lost: {e}")
        finally:
            await self._ws.close()

    def _acquire_msg(self):
        msg = {"type": "acquire", "id": "r1", "holder": self.holder, "requests": self.requests}
        if self.wait:
            msg["max_wait_ms"] = max(1, int(self.wait * 1000))
        return msg

    async def _serve(self, ws):
        """Handle messages until the lease ends (True) or the connection does (False)."""
        async for raw in ws:
            m = json.loads(raw)
            kind = m.get("type")
            if kind == "queued" and m.get("id") == "r1":
                if self.on_queued:
                    self.on_queued(m.get("position"))
            elif kind == "granted" and m.get("id") == "r1":
                self.granted = m
                self._ready.set()
            elif kind == "error" and m.get("id") == "r1" and self.granted is None:
                raise LeaseError(m.get("code", "internal"), m.get("message") or m.get("code"))
            elif kind == "error" and m.get("session") and m.get("code") == "expired":
                self.session = None  # the server ends the session: nothing to resume
            elif kind == "revoked" and m.get("lease") == self.lease_id:
                self._lose(f"revoked by the server: {m.get('reason') or 'no reason given'}")
                return True
            elif kind == "released" and m.get("lease") == self.lease_id:
                if self._released:
                    self._released.set()
                return True
        return False

    async def _resume(self, websockets, cause):
        """Reconnect and resume the session within its grace, or raise."""
        grace = self.session.get("grace_ms", 15000) / 1000
        deadline = asyncio.get_running_loop().time() + grace
        if self.on_note:
            self.on_note(f"connection lost ({cause}): resuming session {self.session['session']} within {grace:g}s")
        delay, last = 0.05, cause
        while asyncio.get_running_loop().time() < deadline:
            try:
                ws, hello = await self._connect(websockets)
            except ConnectionRefusedError as e:
                if not self.session.get("durable"):
                    # Nothing listens where the server was, and it kept no
                    # lease state: the session went with it.
                    raise LeaseError("unavailable", f"the lease server is gone ({e}) and kept no lease state: "
                                     "the lease is lost")
                last = e
                await asyncio.sleep(min(delay, max(0, deadline - asyncio.get_running_loop().time())))
                delay = min(2 * delay, 1.0)
                continue
            except Exception as e:
                last = e
                await asyncio.sleep(min(delay, max(0, deadline - asyncio.get_running_loop().time())))
                delay = min(2 * delay, 1.0)
                continue
            await ws.send(json.dumps({"type": "resume", "session": self.session["session"],
                                      "secret": self.session["secret"]}))
            async for raw in ws:
                m = json.loads(raw)
                if m.get("type") == "error" and m.get("session"):
                    await ws.close()
                    raise LeaseError(m.get("code", "expired"),
                                     f"session expired: the server released the lease ({m.get('message')})")
                if m.get("type") == "revoked" and m.get("lease") == self.lease_id:
                    await ws.close()
                    raise LeaseError("conflict", f"revoked by the server: {m.get('reason') or 'no reason given'}")
                if m.get("type") != "resumed":
                    continue
                leases = {g.get("id"): g for g in m.get("leases") or []}
                queued = {q.get("id") for q in m.get("queued") or []}
                if self.granted is not None and self.lease_id not in {g.get("lease") for g in leases.values()}:
                    await ws.close()
                    raise LeaseError("conflict", "the server no longer has the lease")
                if self.granted is None and "r1" in leases:
                    self.granted = leases["r1"]
                    self._ready.set()
                elif self.granted is None and "r1" not in queued:
                    await ws.send(json.dumps(self._acquire_msg()))  # it never got there
                if self.on_note:
                    self.on_note(f"session {self.session['session']} resumed: lease kept")
                return ws
            last = ConnectionError("connection closed during resume")
        raise LeaseError("unavailable", f"could not resume the session within its grace of {grace:g}s ({last}): "
                         "the lease is lost")

    async def _release(self, broken=None):
        if self._ws is None or self.granted is None or self.lost.is_set():
            if self._ws is not None:
                await self._ws.close()
            return
        self._released = asyncio.Event()
        try:
            msg = {"type": "release", "lease": self.lease_id}
            if broken:
                msg["broken"] = broken.encode()[:4096].decode(errors="ignore")
            await self._ws.send(json.dumps(msg))
            await asyncio.wait_for(self._released.wait(), 5)
        finally:
            await self._ws.close()

    def _fail(self, err):
        self._error = err
        self._ready.set()

    def _lose(self, reason):
        if self._releasing or self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        if self.on_lost:
            self.on_lost(reason)


# --- the pytest side -------------------------------------------------------


def pytest_addoption(parser):
    g = parser.getgroup("forge-lease", "forge test resource leases")
    g.addoption("--forge-lease", action="append", default=None, metavar="POOL[:N]",
                help="lease N resources of POOL for the session (repeatable; env FORGE_LEASE_POOLS)")
    g.addoption("--forge-lease-label", action="append", default=None, metavar="k=v",
                help="only resources with this label (repeatable; env FORGE_LEASE_LABELS)")
    g.addoption("--forge-server", default=None, metavar="URL",
                help=f"the forge server (env FORGE_SERVER; default {DEFAULT_SERVER})")
    g.addoption("--forge-lease-wait", type=float, default=None, metavar="SECONDS",
                help="give up when not granted within SECONDS (env FORGE_LEASE_WAIT)")


def _settings(config):
    pools = config.getoption("forge_lease") or os.environ.get("FORGE_LEASE_POOLS", "").replace(",", " ").split()
    label_args = config.getoption("forge_lease_label") or os.environ.get("FORGE_LEASE_LABELS", "").replace(",", " ").split()
    labels = {}
    for kv in label_args:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise pytest.UsageError(f"forge lease: bad label {kv!r}: want k=v")
        labels[k] = v
    server = config.getoption("forge_server") or os.environ.get("FORGE_SERVER") or DEFAULT_SERVER
    wait = config.getoption("forge_lease_wait")
    if wait is None and os.environ.get("FORGE_LEASE_WAIT"):
        wait = float(os.environ["FORGE_LEASE_WAIT"])
    return pools, labels, server, wait


class _State:
    def __init__(self):
        self.lease = None
        self.granted = None  # the granted message, ours or forge lease's
        self.lost_reason = None
        self.broken = None  # why a test found the resources broken


_STATE_KEY = pytest.StashKey[_State]()  # pytest >= 7


def _state(config):
    return config.stash[_STATE_KEY]


def pytest_configure(config):
    config.stash[_STATE_KEY] = _State()


def pytest_sessionstart(session):
    config = session.config
    st = _state(config)
    pools, labels, server, wait = _settings(config)
    tr = config.pluginmanager.get_plugin("terminalreporter")

    def say(text):
        if tr is not None:
            tr.write_line(f"forge lease: {text}")
        else:
            sys.stderr.write(f"forge lease: {text}\n")

    if not pools:
        inherited = os.environ.get("FORGE_LEASE_JSON")
        if inherited:
            st.granted = json.loads(inherited)
        return
    try:
        requests = parse_pools(pools, labels)
    except LeaseError as e:
        raise pytest.UsageError(f"forge lease: {e}")
    holder = f"{getpass.getuser()}@{socket.gethostname()} pytest {' '.join(config.invocation_params.args)}"[:200]
    names = ", ".join(r["pool"] for r in requests)

    def lost(reason):
        st.lost_reason = reason
        sys.stderr.write(f"\nforge lease: lost the lease on {names} ({reason}): the resources may already "
                         "belong to someone else; stopping the test session\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGINT)  # interrupts the running test, even a sleeping one

    def note(text):
        sys.stderr.write(f"\nforge lease: {text}\n")
        sys.stderr.flush()

    lease = Lease(server, requests, holder, wait=wait,
                  on_queued=lambda pos: say(f"waiting for {names}: position {pos}"), on_lost=lost, on_note=note)
    try:
        st.granted = lease.acquire()
    except LeaseError as e:
        if e.code == "timeout":
            pytest.exit(f"forge lease: no {names} granted within {wait}s", returncode=124)
        pytest.exit(f"forge lease: {e}", returncode=69 if e.code == "unavailable" else 2)
    st.lease = lease
    got = " ".join(f"{p}={','.join(r['id'] for r in rs)}" for p, rs in sorted(lease.resources.items()))
    say(f"granted {got} (lease {lease.lease_id})")


def pytest_sessionfinish(session):
    st = _state(session.config)
    if st.lease is not None:
        st.lease.release(broken=st.broken)
    if st.lost_reason is not None:
        session.exitstatus = EXIT_LEASE_LOST


def pytest_unconfigure(config):
    st = config.stash.get(_STATE_KEY, None)
    if st is not None and st.lease is not None:
        st.lease.release()  # idempotent; covers sessions that end abnormally


def pytest_runtest_setup(item):
    st = _state(item.config)
    if st.lost_reason is not None:
        pytest.exit(f"forge lease: lease lost ({st.lost_reason})", returncode=EXIT_LEASE_LOST)


@pytest.fixture(scope="session")
def forge_grant(request):
    """The whole granted message: {"lease", "holder", "granted_at", "resources"}."""
    st = _state(request.config)
    if st.granted is None:
        pytest.skip("no forge lease: give --forge-lease POOL (or FORGE_LEASE_POOLS), or run under forge lease")
    return st.granted


@pytest.fixture(scope="session")
def forge_resources(forge_grant):
    """Pool name -> list of granted resources, each {"id", "attributes", "labels"}."""
    return forge_grant.get("resources", {})


@pytest.fixture(scope="session")
def forge_report_broken(request):
    """A function: forge_report_broken("why") reports the leased resources
    broken. At the end of the session they are released as broken (under
    an enclosing forge lease: through the file $FORGE_LEASE_BROKEN names),
    and the server keeps them out of service until their pool's health
    check passes or an operator enables them."""
    st = _state(request.config)

    def report(reason):
        st.broken = str(reason).strip() or "reported broken by a test"
        path = os.environ.get("FORGE_LEASE_BROKEN")
        if st.lease is None and path:
            with open(path, "w") as f:
                f.write(st.broken)

    return report
