#!/usr/bin/env python3
"""Run the real, unmodified Python `iii-sdk` ChannelWriter/ChannelReader against chanrelay.

Usage: sdk_test.py [DATA_WS_BASE [CONTROL_URL]]
  or env CHANRELAY_WS=ws://127.0.0.1:PORT CHANRELAY_CONTROL=http://127.0.0.1:PORT

Cases (each bounded by CASE_TIMEOUT seconds):
  reader-first          reader connected (control API says so) before the writer starts
  writer-first-closed   writer writes 10 MiB + messages and finishes its close handshake
                        before the reader connects (channel created with a 32 MiB buffer)
  writer-first-blocked  writer starts first on a default (4 MiB) buffer channel, so it is
                        held by backpressure until the reader connects
  bad-key-404           reader with a wrong access key gets HTTP 404 before any upgrade
  dup-reader-409+abort  second reader on a taken end gets 409; DELETE aborts the first (1011)
  reader-gone-1001      reader reads 256 KiB and closes; the writer's next writes fail with the
                        relay's Close 1001 'reader gone'
  abort-while-streaming DELETE while 64 KiB frames flow: both ends must get Close 1011
  minted-refs           refs minted by deploy/mint/mint_ref.py (no control API call; needs
                        CHANRELAY_SIGNING_SECRET = the relay's signing_secret): the documented
                        test vectors, then a stream between the SDK's writer and reader
                        (with CHANRELAY_SDK_NODE_ID, minted for that relay of a fleet: the
                        id `<node>~…` a balancer routes to it)
  cross node->py        Node SDK writer (sdk_test.mjs helper) -> Python SDK reader
  cross py->node        Python SDK writer -> Node SDK reader
                        (cross cases need `node` and tests/sdk/node_modules; skipped otherwise
                        unless CHANRELAY_SDK_REQUIRE_NODE=1)
  cross rust->py        Rust SDK writer (tests/sdk/rust helper) -> Python SDK reader
  cross py->rust        Python SDK writer -> Rust SDK reader
                        (need CHANRELAY_SDK_RUST_BIN, the built helper; run.sh sets it)

Last line: `sdk-python: N passed, M failed`. Exit status 1 if anything failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import websockets
    from iii.channel import ChannelReader, ChannelWriter, StreamChannelRef
except ImportError as exc:  # pragma: no cover
    print(f"sdk-python: cannot import iii-sdk ({exc}); run tests/sdk/run.sh to install it", file=sys.stderr)
    print("sdk-python: 0 passed, 1 failed")
    sys.exit(2)

MiB = 1024 * 1024
DATA_SIZE = int(os.environ.get("CHANRELAY_SDK_BYTES", str(10 * MiB)))
CASE_TIMEOUT = float(os.environ.get("CHANRELAY_SDK_CASE_TIMEOUT", "60"))
# The Python SDK's close() waits for the relay to close TCP (websockets client
# semantics); without that it hangs for close_timeout = 10 s. Anything near that is a bug.
MAX_CLOSE_S = float(os.environ.get("CHANRELAY_SDK_MAX_CLOSE_S", "3"))
# write() sizes cycled through: 1 MiB (SDK splits into 64 KiB frames), odd sizes, 1 byte.
PIECES = [MiB, 65536, 100003, 1, 300000, 65535, 65537, 7]


class CaseFailure(Exception):
    pass


async def within(aw, seconds: float, what: str):
    """Awaits `aw` for at most `seconds`; past that the case fails saying what it waited for."""
    try:
        return await asyncio.wait_for(aw, seconds)
    except asyncio.TimeoutError:
        raise CaseFailure(f"{what}: not within {seconds:g} s") from None


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise CaseFailure(msg)


# ---------------------------------------------------------------- control API

def _http(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    token = os.environ.get("CHANRELAY_CONTROL_TOKEN")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def create_channel(control: str, **opts) -> dict:
    status, body = await asyncio.to_thread(_http, "POST", f"{control}/v1/channels", opts or None)
    check(status == 201, f"POST /v1/channels {opts} -> {status} {body[:200]!r}, expected 201")
    ch = json.loads(body)
    for end, d in (("writer", "write"), ("reader", "read")):
        ref = ch.get(end)
        check(isinstance(ref, dict) and ref.get("direction") == d
              and ref.get("channel_id") == ch.get("channel_id") and ref.get("access_key"),
              f"POST /v1/channels: bad {end} ref in {ch}")
    return ch


async def channel_state(control: str, cid: str) -> dict:
    status, body = await asyncio.to_thread(_http, "GET", f"{control}/v1/channels/{cid}")
    check(status == 200, f"GET /v1/channels/{cid} -> {status} {body[:200]!r}")
    return json.loads(body)


async def wait_state(control: str, cid: str, pred, what: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < deadline:
        st = await channel_state(control, cid)
        if pred(st):
            return st
        await asyncio.sleep(0.02)
    raise CaseFailure(f"timed out after {timeout}s waiting for {what}; last GET state {st}")


# ---------------------------------------------------------------- payloads

def make_payload(seed: int, size: int = DATA_SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def make_messages(tag: str) -> list[str]:
    # start (small), middle (> 64 KiB, multi-byte UTF-8), end (small)
    middle = f"middle:{tag}:" + ("héllo wörld ✓ 🚀 " * 4000)
    return [f"start:{tag}", middle, f"end:{tag}"]


def expected_offsets(size: int) -> list[int]:
    return [0, size // 2, size]


def pieces(buf: bytes):
    off, i = 0, 0
    while off < len(buf):
        n = PIECES[i % len(PIECES)]
        yield buf[off:off + n]
        off += n
        i += 1


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def short(m: str) -> str:
    return m if len(m) <= 40 else f"{m[:32]}...({len(m)} chars)"


# ---------------------------------------------------------------- SDK ends

def handshake_problems(ws) -> list[str]:
    """What the 101 response carried that chanrelay's contract forbids / requires."""
    probs = []
    try:
        headers = ws.response.headers
    except AttributeError:
        return probs
    ext = headers.get("Sec-WebSocket-Extensions")
    if ext:
        probs.append(f"101 carried Sec-WebSocket-Extensions: {ext!r} (deflate must be declined)")
    if headers.get("Sec-WebSocket-Protocol"):
        probs.append("101 carried a Sec-WebSocket-Protocol")
    cap = headers.get("x-iii-capabilities")
    if cap is None or "tcp-nodelay" not in cap:
        probs.append(f"101 lacks `x-iii-capabilities: tcp-nodelay` (got {cap!r})")
    return probs


async def py_write(base: str, ref: dict, data: bytes, msgs: list[str]) -> dict:
    w = ChannelWriter(base, StreamChannelRef(**ref))
    await w.send_message_async(msgs[0])
    half = len(data) // 2
    for p in pieces(data[:half]):
        await w.write(p)
    await w.send_message_async(msgs[1])
    for p in pieces(data[half:]):
        await w.write(p)
    await w.send_message_async(msgs[2])
    t0 = time.monotonic()
    await w.close_async()
    close_s = time.monotonic() - t0
    ws = w._ws  # peek only to report what the relay answered
    rcvd = ws.protocol.close_rcvd
    return {
        "close_s": close_s,
        "close_rcvd": None if rcvd is None else (rcvd.code, rcvd.reason),
        "handshake": handshake_problems(ws),
    }


def check_writer(res: dict, who: str = "writer") -> None:
    check(not res["handshake"], f"{who}: " + "; ".join(res["handshake"]))
    check(res["close_rcvd"] is not None,
          f"{who}: relay never sent a Close frame in reply to the writer's Close")
    check(res["close_rcvd"][0] == 1000,
          f"{who}: relay replied Close {res['close_rcvd']} to the writer's Close 1000, expected 1000")
    check(res["close_s"] < MAX_CLOSE_S,
          f"{who}: ChannelWriter.close_async() took {res['close_s']:.2f}s (relay must reply Close and "
          f"close the writer's TCP at once; the Python SDK waits for the server to close first)")


async def py_read(base: str, ref: dict, started: asyncio.Event | None = None) -> dict:
    r = ChannelReader(base, StreamChannelRef(**ref))
    h = hashlib.sha256()
    state = {"n": 0, "msgs": []}
    r.on_message(lambda m: state["msgs"].append((state["n"], m)))
    last_data = None
    async for chunk in r:
        check(isinstance(chunk, bytes), f"reader got non-bytes chunk {type(chunk)}")
        h.update(chunk)
        state["n"] += len(chunk)
        last_data = time.monotonic()
    end = time.monotonic()
    ws = r._ws  # peek only to see how the relay ended the stream
    rcvd = ws.protocol.close_rcvd if ws is not None else None
    return {
        "n": state["n"],
        "sha256": h.hexdigest(),
        "msgs": state["msgs"],
        "close_rcvd": None if rcvd is None else (rcvd.code, rcvd.reason),
        "tail_s": 0.0 if last_data is None else end - last_data,
        "handshake": handshake_problems(ws) if ws is not None else [],
    }


def check_reader(res: dict, data: bytes, msgs: list[str], who: str = "reader") -> None:
    check(res["close_rcvd"] is not None,
          f"{who}: stream ended without a Close frame from the relay (TCP dropped?) after {res['n']} bytes")
    check(res["close_rcvd"][0] == 1000,
          f"{who}: relay closed the reader with {res['close_rcvd']} after {res['n']} bytes, expected 1000")
    check(res["n"] == len(data), f"{who}: received {res['n']} bytes, expected {len(data)}")
    check(res["sha256"] == sha(data), f"{who}: sha256 mismatch ({res['sha256']} != {sha(data)})")
    got = [m for _, m in res["msgs"]]
    if got != msgs:
        raise CaseFailure(f"{who}: text messages {[short(m) for m in got]} != expected {[short(m) for m in msgs]}")
    offs = [o for o, _ in res["msgs"]]
    check(offs == expected_offsets(len(data)),
          f"{who}: text messages arrived at byte offsets {offs}, expected {expected_offsets(len(data))} "
          f"(text/binary order not preserved)")
    check(not res["handshake"], f"{who}: " + "; ".join(res["handshake"]))
    check(res["tail_s"] < MAX_CLOSE_S,
          f"{who}: stream ended {res['tail_s']:.2f}s after the last data (the Python SDK reader waits for the "
          f"relay to close TCP after the Close handshake; websockets close_timeout is 10 s)")


# ---------------------------------------------------------------- cases

async def case_reader_first(base: str, control: str) -> str:
    ch = await create_channel(control)
    data, msgs = make_payload(1), make_messages("reader-first")
    rtask = asyncio.create_task(py_read(base, ch["reader"]))
    await wait_state(control, ch["channel_id"], lambda s: s.get("reader_connected") is True, "reader_connected")
    check(not rtask.done(), "reader finished before the writer connected")
    t0 = time.monotonic()
    wres = await py_write(base, ch["writer"], data, msgs)
    rres = await rtask
    check_writer(wres)
    check_reader(rres, data, msgs)
    return f"{len(data)} B in {time.monotonic() - t0:.2f}s, writer close {wres['close_s'] * 1000:.0f} ms"


async def case_writer_first_closed(base: str, control: str) -> str:
    ch = await create_channel(control, buffer_bytes=32 * MiB)
    data, msgs = make_payload(2), make_messages("writer-first-closed")
    wres = await py_write(base, ch["writer"], data, msgs)
    check_writer(wres)
    st = await channel_state(control, ch["channel_id"])
    check(st.get("reader_connected") is False, f"GET state says reader connected before it was: {st}")
    rres = await py_read(base, ch["reader"])
    check_reader(rres, data, msgs)
    return f"writer closed in {wres['close_s'] * 1000:.0f} ms with no reader; reader got all"


async def case_writer_first_blocked(base: str, control: str) -> str:
    ch = await create_channel(control)  # default buffer (4 MiB) < payload: writer must block
    data, msgs = make_payload(3), make_messages("writer-first-blocked")
    wtask = asyncio.create_task(py_write(base, ch["writer"], data, msgs))
    st = await wait_state(control, ch["channel_id"],
                          lambda s: s.get("writer_connected") is True and s.get("buffered_bytes", 0) > 0,
                          "writer_connected and buffered_bytes > 0")
    await asyncio.sleep(0.3)
    st = await channel_state(control, ch["channel_id"])
    check(not wtask.done() or DATA_SIZE <= 4 * MiB,
          f"writer finished 10 MiB with no reader on a 4 MiB channel: backpressure missing? {st}")
    check(st.get("reader_connected") is False, f"reader_connected before reader: {st}")
    rres = await py_read(base, ch["reader"])
    wres = await wtask
    check_writer(wres)
    check_reader(rres, data, msgs)
    return f"buffered {st.get('buffered_bytes')} B while blocked"


async def expect_status(coro_fn, status: int, what: str) -> None:
    try:
        res = await coro_fn()
    except websockets.exceptions.InvalidStatus as e:
        got = e.response.status_code
        check(got == status, f"{what}: handshake answered HTTP {got}, expected {status}")
        return
    raise CaseFailure(f"{what}: expected HTTP {status} before upgrade, but the connection opened "
                      f"(result {str(res)[:200]})")


async def case_bad_key(base: str, control: str) -> str:
    ch = await create_channel(control)
    k = ch["reader"]["access_key"]
    bad = dict(ch["reader"], access_key=k[:-1] + ("A" if k[-1] != "A" else "B"))
    await expect_status(lambda: py_read(base, bad), 404, "reader with wrong key")
    # Each end has its own key: the writer's opens no reader.
    swapped = dict(ch["reader"], access_key=ch["writer"]["access_key"])
    await expect_status(lambda: py_read(base, swapped), 404, "reader with the writer's key")
    unknown = dict(ch["writer"], channel_id="00000000-0000-4000-8000-000000000000")
    await expect_status(lambda: ChannelWriter(base, StreamChannelRef(**unknown)).send_message_async("x"),
                        404, "writer on unknown channel")
    return "wrong key, the other end's key and unknown channel -> 404"


async def case_dup_reader_abort(base: str, control: str) -> str:
    ch = await create_channel(control)
    r1 = asyncio.create_task(py_read(base, ch["reader"]))
    await wait_state(control, ch["channel_id"], lambda s: s.get("reader_connected") is True, "reader_connected")
    await expect_status(lambda: py_read(base, ch["reader"]), 409, "second reader")
    check(not r1.done(), "first reader ended when a second reader was refused")
    status, body = await asyncio.to_thread(_http, "DELETE", f"{control}/v1/channels/{ch['channel_id']}")
    check(status == 204, f"DELETE /v1/channels/{{id}} -> {status} {body[:200]!r}, expected 204")
    res = await within(r1, 10, "the aborted reader's end after the DELETE")
    check(res["close_rcvd"] is not None and res["close_rcvd"][0] == 1011,
          f"aborted reader got close {res['close_rcvd']}, expected 1011 'channel aborted'")
    # The Python SDK reader ends its iteration silently on 1011 (like a clean end): only the
    # close code shows the abort.
    return f"409 then DELETE -> reader close {res['close_rcvd']}"


async def case_reader_gone(base: str, control: str) -> str:
    ch = await create_channel(control)
    r = ChannelReader(base, StreamChannelRef(**ch["reader"]))
    got = 0
    closing = asyncio.Event()

    async def read_some() -> float:
        nonlocal got
        async for chunk in r:
            got += len(chunk)
            if got >= 256 * 1024:
                break
        t0 = time.monotonic()
        closing.set()
        await r.close_async()  # reader-initiated Close 1000
        return time.monotonic() - t0

    async def relay_released() -> float:
        # The relay's side of the reader's Close: the channel ends and is removed.
        await closing.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 15:
            try:
                await asyncio.to_thread(urllib.request.urlopen, f"{control}/v1/channels/{ch['channel_id']}")
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return time.monotonic() - t0
            await asyncio.sleep(0.01)
        return float("inf")

    rtask = asyncio.create_task(read_some())
    released = asyncio.create_task(relay_released())
    await wait_state(control, ch["channel_id"], lambda s: s.get("reader_connected") is True, "reader_connected")
    w = ChannelWriter(base, StreamChannelRef(**ch["writer"]))
    chunk = make_payload(6, 64 * 1024)
    sent, err = 0, None
    try:
        while sent < 256 * MiB:
            await w.write(chunk)
            sent += len(chunk)
    except websockets.ConnectionClosed as e:
        err = e
    reader_close_s = await rtask
    released_s = await released
    check(err is not None, f"writer wrote {sent} B after the reader left without being stopped")
    check(err.rcvd is not None and err.rcvd.code == 1001 and err.rcvd.reason == "reader gone",
          f"writer saw {err!r} (close from relay {err.rcvd}; cause {err.__cause__!r}) after {sent} B, expected Close 1001 'reader gone'")
    check(released_s < MAX_CLOSE_S,
          f"the relay took {released_s:.2f}s to end the channel after the reader's Close")
    # The SDK reader stopped consuming with messages still queued (websockets then stops
    # reading its socket), so it may only notice the relay's Close/TCP close when its own
    # close_timeout (10 s) fires. Bound it by that, not by the relay's speed.
    check(reader_close_s < 12,
          f"reader close_async() took {reader_close_s:.2f}s (beyond the SDK's own 10 s close timeout)")
    return (f"writer stopped after {sent} B with {err.rcvd.code} {err.rcvd.reason!r}; "
            f"relay ended the channel {released_s * 1000:.0f} ms after the reader's Close; "
            f"SDK close_async {reader_close_s:.2f} s")


async def case_abort_streaming(base: str, control: str) -> str:
    ch = await create_channel(control)
    rtask = asyncio.create_task(py_read(base, ch["reader"]))
    await wait_state(control, ch["channel_id"], lambda s: s.get("reader_connected") is True, "reader_connected")
    w = ChannelWriter(base, StreamChannelRef(**ch["writer"]))
    chunk = make_payload(7, 64 * 1024)

    async def write_forever():
        # Until the relay stops it: bounded by 16 GiB and 20 s (the relay moves a GiB in well
        # under a second, so a 1 GiB writer could finish before the DELETE lands).
        sent = 0
        deadline = time.monotonic() + 20
        try:
            while sent < 16 * 1024 * MiB and time.monotonic() < deadline:
                await w.write(chunk)
                sent += len(chunk)
                # A write the relay takes at once does not yield: let the case's other
                # coroutines (the state polling, the DELETE) run.
                await asyncio.sleep(0)
        except websockets.ConnectionClosed as e:
            return e
        return None

    wtask = asyncio.create_task(write_forever())
    await wait_state(control, ch["channel_id"], lambda s: s.get("bytes_forwarded", 0) >= MiB, "1 MiB forwarded")
    status, body = await asyncio.to_thread(_http, "DELETE", f"{control}/v1/channels/{ch['channel_id']}")
    check(status == 204, f"DELETE -> {status} {body[:200]!r}, expected 204")
    rres = await within(rtask, 10, "the reader's end after the DELETE")
    werr = await within(wtask, 10, "the writer's end after the DELETE")
    probs = []
    if rres["close_rcvd"] is None or rres["close_rcvd"][0] != 1011:
        probs.append(f"reader got close {rres['close_rcvd']} after {rres['n']} B (None = TCP cut, e.g. mid-frame), "
                     f"expected 1011 'channel aborted'")
    if werr is None or werr.rcvd is None or werr.rcvd.code != 1011:
        probs.append(f"writer saw {werr!r} (cause {getattr(werr, '__cause__', None)!r}), expected Close 1011 "
                     f"'channel aborted'")
    check(not probs, "; ".join(probs))
    return f"DELETE mid-stream: reader {rres['close_rcvd']} after {rres['n']} B, writer {werr.rcvd.code}"


# ---------------------------------------------------------------- cross-language (Node helper)

def node_cmd() -> list[str] | None:
    node = shutil.which("node")
    script = os.path.join(HERE, "sdk_test.mjs")
    if node and os.path.isdir(os.path.join(HERE, "node_modules", "iii-sdk")) and os.path.exists(script):
        return [node, script, "--helper"]
    return None


def rust_cmd() -> list[str] | None:
    binary = os.environ.get("CHANRELAY_SDK_RUST_BIN")
    return [binary, "--helper"] if binary and os.access(binary, os.X_OK) else None


async def run_helper(cmd: list[str], who: str, spec: dict) -> dict:
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(spec).encode()), CASE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise CaseFailure(f"{who} helper {spec['role']} timed out")
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise CaseFailure(f"{who} helper {spec['role']} exited {proc.returncode}: "
                          f"{(out + err).decode(errors='replace')[-800:]}")
    res = json.loads(lines[-1])
    if res.get("error"):
        raise CaseFailure(f"{who} {spec['role']}: {res['error']}")
    return res


# The documented signed-key test vectors (docs/protocol.md).
VECTOR_SECRET, VECTOR_ID, VECTOR_EXPIRY = "test-signing-secret-0123456789", "job-42", 4102444800
VECTOR_KEYS = {
    "write": "s2.4102444800.IdiIRUnFPqGs_t_f8aMusAYDh_QgP5VxdYq2xxmBUoc",
    "read": "s2.4102444800.4TzP2zQgSbcCNOS_PYxywyWujNJ96jHLFZosH53iEyY",
}


async def case_minted_refs(base: str, control: str) -> str:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "deploy", "mint"))
    from mint_ref import mint_ref  # the snippet docs/deployment.md shows

    v = mint_ref(VECTOR_SECRET, VECTOR_ID, expiry=VECTOR_EXPIRY)
    for end, d in (("writer", "write"), ("reader", "read")):
        check(v[end]["access_key"] == VECTOR_KEYS[d], f"{d} key {v[end]['access_key']} != test vector")
    secret = os.environ.get("CHANRELAY_SIGNING_SECRET")
    check(bool(secret), "CHANRELAY_SIGNING_SECRET not set (the relay's signing_secret)")
    # Behind a balancer the id must name the relay that shares the secret (`<node>~…`).
    ch = mint_ref(secret, ttl_s=120, node_id=os.environ.get("CHANRELAY_SDK_NODE_ID") or None)
    data, msgs = make_payload(7, 2 * MiB), make_messages("minted")
    rtask = asyncio.create_task(py_read(base, ch["reader"]))
    wres = await py_write(base, ch["writer"], data, msgs)
    rres = await rtask
    check_writer(wres)
    check_reader(rres, data, msgs)
    # The relay removes the channel once the reader's side of the Close is done, a moment
    # after the reader's stream ended.
    deadline = time.monotonic() + 5
    while True:
        status, _ = await asyncio.to_thread(_http, "GET", f"{control}/v1/channels/{ch['channel_id']}")
        if status == 404 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    check(status == 404, f"GET 5 s after the minted channel ended -> {status}, expected 404 (gone)")
    return f"test vectors match; {len(data)} B over a ref minted without the control API"


async def helper_writes_to_py(base: str, control: str, cmd: list[str], who: str, seed: int) -> dict:
    """Another SDK's writer (a helper process) streams to a Python SDK reader; returns the
    helper's result."""
    ch = await create_channel(control)
    data, msgs = make_payload(seed), make_messages(f"{who}->py")
    with tempfile.NamedTemporaryFile(prefix="chanrelay-sdk-", delete=False) as f:
        f.write(data)
        path = f.name
    try:
        rtask = asyncio.create_task(py_read(base, ch["reader"]))
        await wait_state(control, ch["channel_id"], lambda s: s.get("reader_connected") is True, "reader_connected")
        wres = await run_helper(cmd, who, {"role": "write", "base": base, "ref": ch["writer"],
                                           "data_file": path, "messages": msgs})
        rres = await rtask
    finally:
        os.unlink(path)
    check_reader(rres, data, msgs, "python reader")
    return wres


async def py_writes_to_helper(base: str, control: str, cmd: list[str], who: str, seed: int) -> dict:
    """A Python SDK writer streams (and closes) with no reader; then another SDK's reader (a
    helper process) reads it all. Returns the helper's result, its bytes and messages checked."""
    ch = await create_channel(control, buffer_bytes=32 * MiB)
    data, msgs = make_payload(seed), make_messages(f"py->{who}")
    wres = await py_write(base, ch["writer"], data, msgs)
    check_writer(wres, "python writer")
    rres = await run_helper(cmd, who, {"role": "read", "base": base, "ref": ch["reader"]})
    check(rres["n"] == len(data), f"{who} reader: got {rres['n']} bytes, expected {len(data)}")
    check(rres["sha256"] == sha(data), f"{who} reader: sha256 mismatch")
    got = [m for _, m in rres["msgs"]]
    check(got == msgs, f"{who} reader: messages {[short(m) for m in got]} != {[short(m) for m in msgs]}")
    offs = [o for o, _ in rres["msgs"]]
    check(offs == expected_offsets(len(data)), f"{who} reader: message offsets {offs}")
    return rres


async def case_cross_node_to_py(base: str, control: str) -> str:
    wres = await helper_writes_to_py(base, control, node_cmd(), "node", 4)
    check(wres.get("close_code") == 1000, f"node writer: relay replied close {wres.get('close_code')}, expected 1000")
    return "node writer -> python reader ok"


async def case_cross_py_to_node(base: str, control: str) -> str:
    rres = await py_writes_to_helper(base, control, node_cmd(), "node", 5)
    check(rres.get("close_code") == 1000, f"node reader: relay closed with {rres.get('close_code')}, expected 1000")
    return "python writer -> node reader ok"


async def case_cross_rust_to_py(base: str, control: str) -> str:
    await helper_writes_to_py(base, control, rust_cmd(), "rust", 8)
    return "rust writer -> python reader ok"


async def case_cross_py_to_rust(base: str, control: str) -> str:
    await py_writes_to_helper(base, control, rust_cmd(), "rust", 9)
    return "python writer -> rust reader ok"


# ---------------------------------------------------------------- main

async def main() -> int:
    base = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CHANRELAY_WS", "")).rstrip("/")
    control = (sys.argv[2] if len(sys.argv) > 2 else os.environ.get("CHANRELAY_CONTROL", "")).rstrip("/")
    if not base or not control:
        print("usage: sdk_test.py ws://DATA_HOST:PORT http://CONTROL_HOST:PORT (or CHANRELAY_WS/CHANRELAY_CONTROL)",
              file=sys.stderr)
        return 2
    cases = [
        ("reader-first", case_reader_first),
        ("writer-first-closed", case_writer_first_closed),
        ("writer-first-blocked", case_writer_first_blocked),
        ("bad-key-404", case_bad_key),
        ("dup-reader-409+abort", case_dup_reader_abort),
        ("reader-gone-1001", case_reader_gone),
        ("abort-while-streaming", case_abort_streaming),
        ("minted-refs", case_minted_refs),
    ]
    if node_cmd():
        cases += [("cross node->py", case_cross_node_to_py), ("cross py->node", case_cross_py_to_node)]
    elif os.environ.get("CHANRELAY_SDK_REQUIRE_NODE") == "1":
        print("FAIL cross-language: node or tests/sdk/node_modules/iii-sdk missing")
        return 1
    else:
        print("SKIP cross-language cases: node or tests/sdk/node_modules/iii-sdk missing")
    if rust_cmd():
        cases += [("cross rust->py", case_cross_rust_to_py), ("cross py->rust", case_cross_py_to_rust)]
    elif os.environ.get("CHANRELAY_SDK_REQUIRE_NODE") == "1":
        print("FAIL cross-language: CHANRELAY_SDK_RUST_BIN (the Rust SDK helper) missing")
        return 1
    only = os.environ.get("CHANRELAY_SDK_ONLY")
    if only:
        cases = [c for c in cases if c[0] in only.split(",")]
    skip = os.environ.get("CHANRELAY_SDK_SKIP")
    if skip:
        cases = [c for c in cases if c[0] not in skip.split(",")]
    passed = failed = 0
    for name, fn in cases:
        t0 = time.monotonic()
        try:
            info = await asyncio.wait_for(fn(base, control), CASE_TIMEOUT)
            passed += 1
            print(f"PASS {name} ({time.monotonic() - t0:.2f}s): {info}", flush=True)
        except asyncio.TimeoutError:
            failed += 1
            print(f"FAIL {name}: the case's limit ({CASE_TIMEOUT:.0f} s) ran out", flush=True)
        except CaseFailure as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        except Exception as e:  # SDK/transport errors are failures too, with detail
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            if os.environ.get("CHANRELAY_SDK_VERBOSE"):
                traceback.print_exc()
    print(f"sdk-python: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
