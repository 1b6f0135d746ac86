#!/usr/bin/env node
// Run the real, unmodified Node `iii-sdk` ChannelWriter/ChannelReader against chanrelay.
//
// Usage: node sdk_test.mjs [DATA_WS_BASE [CONTROL_URL]]
//   or env CHANRELAY_WS=ws://127.0.0.1:PORT CHANRELAY_CONTROL=http://127.0.0.1:PORT
//   node sdk_test.mjs --helper '<json spec>'   (used by sdk_test.py for cross-language cases)
//
// Cases (each bounded by CASE_TIMEOUT seconds):
//   reader-first          reader connected (control API says so) before the writer starts;
//                         writer ends with stream.end()
//   writer-first-closed   writer writes 10 MiB + messages and its WebSocket is fully closed
//                         before the reader connects (channel with a 32 MiB buffer); writer
//                         ends with writer.close()
//   writer-first-blocked  writer starts first on a default (4 MiB) channel: held by
//                         backpressure until the reader connects
//   bad-key-404           wrong key / unknown channel -> HTTP 404 before any upgrade
//   dup-writer-409+abort  second writer on a taken end -> 409 (not 101-then-close, which
//                         makes this SDK silently drop data); DELETE -> first reader gets 1011
//   writer-abort-1011     writer.stream.destroy() (SDK terminates the socket, no Close): the
//                         reader gets every byte written before, then Close 1011 'writer disconnected'
//   minted-refs           refs minted by deploy/mint/mint_ref.mjs (no control API call; needs
//                         CHANRELAY_SIGNING_SECRET = the relay's signing_secret): the documented
//                         test vectors, then a stream between the SDK's writer and reader
//                         (with CHANRELAY_SDK_NODE_ID, minted for that relay of a fleet: the
//                         id `<node>~…` a balancer routes to it)
//
// Last line: `sdk-node: N passed, M failed`. Exit status 1 if anything failed.

import { ChannelReader, ChannelWriter } from 'iii-sdk/channel'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mintRef } from '../../deploy/mint/mint_ref.mjs'

const MiB = 1024 * 1024
const DATA_SIZE = Number(process.env.CHANRELAY_SDK_BYTES ?? 10 * MiB)
const CASE_TIMEOUT = Number(process.env.CHANRELAY_SDK_CASE_TIMEOUT ?? 60)
const MAX_CLOSE_MS = Number(process.env.CHANRELAY_SDK_MAX_CLOSE_S ?? 3) * 1000
const PIECES = [MiB, 65536, 100003, 1, 300000, 65535, 65537, 7]

class CaseFailure extends Error {}
const check = (cond, msg) => {
  if (!cond) throw new CaseFailure(msg)
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const sha = (b) => createHash('sha256').update(b).digest('hex')
const short = (m) => (m.length <= 40 ? m : `${m.slice(0, 32)}...(${m.length} chars)`)

function withTimeout(p, ms, what) {
  let t
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new CaseFailure(`${what}: timed out after ${ms / 1000}s`)), ms)
    }),
  ])
}

// ------------------------------------------------------------------ control API

async function http(method, url, body) {
  const headers = {}
  if (body !== undefined) headers['content-type'] = 'application/json'
  if (process.env.CHANRELAY_CONTROL_TOKEN) headers.authorization = `Bearer ${process.env.CHANRELAY_CONTROL_TOKEN}`
  const res = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  })
  return { status: res.status, text: await res.text() }
}

async function createChannel(control, opts) {
  const { status, text } = await http('POST', `${control}/v1/channels`, opts)
  check(status === 201, `POST /v1/channels ${JSON.stringify(opts ?? null)} -> ${status} ${text.slice(0, 200)}, expected 201`)
  const ch = JSON.parse(text)
  for (const [end, dir] of [['writer', 'write'], ['reader', 'read']]) {
    const ref = ch[end]
    check(ref && ref.direction === dir && ref.channel_id === ch.channel_id && ref.access_key,
      `POST /v1/channels: bad ${end} ref in ${text}`)
  }
  return ch
}

async function channelState(control, id) {
  const { status, text } = await http('GET', `${control}/v1/channels/${id}`)
  check(status === 200, `GET /v1/channels/${id} -> ${status} ${text.slice(0, 200)}`)
  return JSON.parse(text)
}

async function waitState(control, id, pred, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs
  let st = {}
  while (Date.now() < deadline) {
    st = await channelState(control, id)
    if (pred(st)) return st
    await sleep(20)
  }
  throw new CaseFailure(`timed out waiting for ${what}; last GET state ${JSON.stringify(st)}`)
}

// ------------------------------------------------------------------ payloads

function makePayload(seed, size = DATA_SIZE) {
  // xorshift32 over 32-bit words: fast, deterministic, pseudo-random
  const buf = Buffer.alloc(size)
  let x = (seed * 2654435761) >>> 0 || 1
  const words = Math.floor(size / 4)
  for (let i = 0; i < words; i++) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    buf.writeUInt32LE(x, i * 4)
  }
  for (let i = words * 4; i < size; i++) buf[i] = i & 0xff
  return buf
}

function makeMessages(tag) {
  return [`start:${tag}`, `middle:${tag}:` + 'héllo wörld ✓ 🚀 '.repeat(4000), `end:${tag}`]
}

const expectedOffsets = (size) => [0, Math.floor(size / 2), size]

function* pieces(buf) {
  let off = 0
  let i = 0
  while (off < buf.length) {
    const n = PIECES[i % PIECES.length]
    yield buf.subarray(off, off + n)
    off += n
    i++
  }
}

function handshakeProblems(headers) {
  if (!headers) return ['no 101 response seen']
  const probs = []
  if (headers['sec-websocket-extensions']) probs.push(`101 carried Sec-WebSocket-Extensions: ${headers['sec-websocket-extensions']} (deflate must be declined)`)
  if (headers['sec-websocket-protocol']) probs.push('101 carried a Sec-WebSocket-Protocol')
  const cap = headers['x-iii-capabilities']
  if (!cap || !String(cap).includes('tcp-nodelay')) probs.push(`101 lacks x-iii-capabilities: tcp-nodelay (got ${cap})`)
  return probs
}

// ------------------------------------------------------------------ SDK ends
// The SDK objects are used through their public API (constructor, sendMessage, stream,
// close, onMessage). We only *peek* at the SDK's `ws` field to record the relay's 101
// headers and close codes, and call the reader's `ensureConnected()` (what its stream's
// read() does) so that the peek is possible before the first byte.

function writeP(stream, chunk) {
  return new Promise((resolve, reject) => {
    if (stream.destroyed) return reject(stream.errored ?? new Error('writer stream destroyed'))
    stream.write(chunk, (err) => (err ? reject(err) : resolve()))
  })
}

async function nodeWrite(base, ref, data, msgs, { endWith = 'end' } = {}) {
  const w = new ChannelWriter(base, ref)
  let streamErr = null
  w.stream.on('error', (e) => { streamErr = e })
  w.sendMessage(msgs[0]) // connects
  const ws = w.ws
  let headers = null
  ws.on('upgrade', (res) => { headers = res.headers })
  let closeInfo = null
  const closed = new Promise((resolve) => ws.on('close', (code, reason) => {
    closeInfo = { code, reason: reason.toString() }
    resolve()
  }))
  const half = Math.floor(data.length / 2)
  try {
    for (const p of pieces(data.subarray(0, half))) await writeP(w.stream, p)
    w.sendMessage(msgs[1])
    for (const p of pieces(data.subarray(half))) await writeP(w.stream, p)
    w.sendMessage(msgs[2])
  } catch (e) {
    throw new CaseFailure(`writer failed mid-stream: ${e.message} (close ${JSON.stringify(closeInfo)})`)
  }
  const t0 = Date.now()
  if (endWith === 'end') w.stream.end()
  else w.close()
  await withTimeout(closed, 15000, 'writer close handshake')
  const closeMs = Date.now() - t0
  return { closeMs, closeInfo, headers, streamErr, endWith, extensions: ws.extensions }
}

function checkWriter(res, who = 'writer') {
  const hp = handshakeProblems(res.headers)
  check(!hp.length, `${who}: ${hp.join('; ')}`)
  // writer.close() waits for the relay's Close reply (expect 1000). stream.end() does not:
  // the SDK's Writable autoDestroy calls ws.terminate() right after sending Close 1000, so
  // the client itself reports 1006 and any reply from the relay is never seen.
  const ok = res.endWith === 'end' ? [1000, 1006] : [1000]
  check(res.closeInfo && ok.includes(res.closeInfo.code),
    `${who}: relay answered the writer's Close 1000 with ${JSON.stringify(res.closeInfo)}, expected ${ok.join(' or ')}`)
  check(res.closeMs < MAX_CLOSE_MS, `${who}: close handshake + TCP close took ${res.closeMs} ms`)
  check(!res.streamErr, `${who}: stream error ${res.streamErr}`)
}

async function nodeRead(base, ref) {
  const r = new ChannelReader(base, ref)
  const h = createHash('sha256')
  let consumed = 0
  const msgs = []
  r.onMessage((m) => msgs.push([consumed + r.stream.readableLength, m]))
  r.ensureConnected()
  const ws = r.ws
  let headers = null
  ws.on('upgrade', (res) => { headers = res.headers })
  let closeInfo = null
  ws.on('close', (code, reason) => { closeInfo = { code, reason: reason.toString() } })
  let lastData = null
  r.stream.on('data', (c) => {
    h.update(c)
    consumed += c.length
    lastData = Date.now()
  })
  await new Promise((resolve, reject) => {
    r.stream.on('end', resolve)
    r.stream.on('error', reject)
  })
  return { n: consumed, sha256: h.digest('hex'), msgs, closeInfo, headers, tailMs: lastData ? Date.now() - lastData : 0 }
}

function checkReader(res, data, msgs, who = 'reader') {
  check(res.closeInfo, `${who}: stream ended without a close event after ${res.n} bytes`)
  check(res.closeInfo.code === 1000,
    `${who}: relay closed the reader with ${JSON.stringify(res.closeInfo)} after ${res.n} bytes, expected 1000 (this SDK ends the stream silently on any close code)`)
  check(res.n === data.length, `${who}: received ${res.n} bytes, expected ${data.length}`)
  check(res.sha256 === sha(data), `${who}: sha256 mismatch`)
  const got = res.msgs.map(([, m]) => m)
  check(JSON.stringify(got) === JSON.stringify(msgs),
    `${who}: text messages ${JSON.stringify(got.map(short))} != expected ${JSON.stringify(msgs.map(short))}`)
  const offs = res.msgs.map(([o]) => o)
  check(JSON.stringify(offs) === JSON.stringify(expectedOffsets(data.length)),
    `${who}: text messages at byte offsets ${JSON.stringify(offs)}, expected ${JSON.stringify(expectedOffsets(data.length))}`)
  const hp = handshakeProblems(res.headers)
  check(!hp.length, `${who}: ${hp.join('; ')}`)
  check(res.tailMs < MAX_CLOSE_MS,
    `${who}: stream ended ${res.tailMs} ms after the last data (ws emits 'close' only once the relay closes TCP; its own fallback timer is 30 s)`)
}

// Connect an SDK end that must be refused before upgrade; resolve with the HTTP status.
function refusedStatus(base, ref, dir) {
  return new Promise((resolve) => {
    let ws
    const onErr = (e) => {
      const m = /Unexpected server response: (\d+)/.exec(String(e?.message ?? e))
      resolve(m ? Number(m[1]) : `error: ${e?.message ?? e}`)
    }
    if (dir === 'read') {
      const r = new ChannelReader(base, ref)
      r.stream.on('error', onErr)
      r.ensureConnected()
      ws = r.ws
    } else {
      const w = new ChannelWriter(base, ref)
      w.stream.on('error', onErr)
      w.sendMessage('probe')
      ws = w.ws
    }
    ws.on('open', () => resolve('opened (101)'))
  })
}

// ------------------------------------------------------------------ cases

async function caseReaderFirst(base, control) {
  const ch = await createChannel(control)
  const data = makePayload(11)
  const msgs = makeMessages('reader-first')
  const rp = nodeRead(base, ch.reader)
  await waitState(control, ch.channel_id, (s) => s.reader_connected === true, 'reader_connected')
  const t0 = Date.now()
  const wres = await nodeWrite(base, ch.writer, data, msgs, { endWith: 'end' })
  const rres = await rp
  checkWriter(wres)
  checkReader(rres, data, msgs)
  return `${data.length} B in ${((Date.now() - t0) / 1000).toFixed(2)}s, writer close ${wres.closeMs} ms`
}

async function caseWriterFirstClosed(base, control) {
  const ch = await createChannel(control, { buffer_bytes: 32 * MiB })
  const data = makePayload(12)
  const msgs = makeMessages('writer-first-closed')
  const wres = await nodeWrite(base, ch.writer, data, msgs, { endWith: 'close' })
  checkWriter(wres)
  const st = await channelState(control, ch.channel_id)
  check(st.reader_connected === false, `GET says reader connected before it was: ${JSON.stringify(st)}`)
  const rres = await nodeRead(base, ch.reader)
  checkReader(rres, data, msgs)
  return `writer closed in ${wres.closeMs} ms with no reader; reader got all`
}

async function caseWriterFirstBlocked(base, control) {
  const ch = await createChannel(control)
  const data = makePayload(13)
  const msgs = makeMessages('writer-first-blocked')
  const wp = nodeWrite(base, ch.writer, data, msgs, { endWith: 'end' })
  wp.catch(() => {})
  await waitState(control, ch.channel_id, (s) => s.writer_connected === true && s.buffered_bytes > 0,
    'writer_connected and buffered_bytes > 0')
  await sleep(300)
  const st = await channelState(control, ch.channel_id)
  // (No "writer still blocked" check here: with stream.end() this SDK terminates its socket
  // right after queueing Close, so the writer side "finishes" once the kernel took the bytes.)
  check(st.buffered_bytes <= 4 * MiB + 64 * 1024 * 2,
    `relay holds ${st.buffered_bytes} B for a 4 MiB channel with no reader: ${JSON.stringify(st)}`)
  check(st.reader_connected === false, `reader_connected before reader: ${JSON.stringify(st)}`)
  const rres = await nodeRead(base, ch.reader)
  const wres = await wp
  checkWriter(wres)
  checkReader(rres, data, msgs)
  return `buffered ${st.buffered_bytes} B while blocked`
}

// The documented signed-key test vectors (docs/protocol.md).
const VECTOR = {
  secret: 'test-signing-secret-0123456789',
  channelId: 'job-42',
  expiry: 4102444800,
  write: 's2.4102444800.IdiIRUnFPqGs_t_f8aMusAYDh_QgP5VxdYq2xxmBUoc',
  read: 's2.4102444800.4TzP2zQgSbcCNOS_PYxywyWujNJ96jHLFZosH53iEyY',
}

async function caseMintedRefs(base, control) {
  const v = mintRef(VECTOR.secret, { channelId: VECTOR.channelId, expiry: VECTOR.expiry })
  check(v.writer.access_key === VECTOR.write, `write key ${v.writer.access_key} != test vector`)
  check(v.reader.access_key === VECTOR.read, `read key ${v.reader.access_key} != test vector`)
  const secret = process.env.CHANRELAY_SIGNING_SECRET
  check(Boolean(secret), "CHANRELAY_SIGNING_SECRET not set (the relay's signing_secret)")
  // Behind a balancer the id must name the relay that shares the secret (`<node>~…`).
  const ch = mintRef(secret, { ttlS: 120, nodeId: process.env.CHANRELAY_SDK_NODE_ID || undefined })
  const data = makePayload(17, 2 * MiB)
  const msgs = makeMessages('minted')
  const rp = nodeRead(base, ch.reader)
  const wres = await nodeWrite(base, ch.writer, data, msgs, { endWith: 'end' })
  const rres = await rp
  checkWriter(wres)
  checkReader(rres, data, msgs)
  // The reader's stream ends on the relay's Close; the relay removes the channel once the
  // reader's Close echo (or its TCP close) comes back, a moment later.
  let status
  for (const t0 = Date.now(); Date.now() - t0 < 5000;) {
    ({ status } = await http('GET', `${control}/v1/channels/${ch.channel_id}`))
    if (status === 404) break
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  check(status === 404, `GET 5 s after the minted channel ended -> ${status}, expected 404 (gone)`)
  return `test vectors match; ${data.length} B over a ref minted without the control API`
}

async function caseBadKey(base, control) {
  const ch = await createChannel(control)
  const k = ch.reader.access_key
  const bad = { ...ch.reader, access_key: k.slice(0, -1) + (k.endsWith('A') ? 'B' : 'A') }
  const s1 = await withTimeout(refusedStatus(base, bad, 'read'), 10000, 'bad key reader')
  check(s1 === 404, `reader with wrong key: got ${s1}, expected HTTP 404`)
  // Each end has its own key: the reader's opens no writer.
  const swapped = { ...ch.writer, access_key: ch.reader.access_key }
  const s3 = await withTimeout(refusedStatus(base, swapped, 'write'), 10000, 'reader key writer')
  check(s3 === 404, `writer with the reader's key: got ${s3}, expected HTTP 404`)
  const unknown = { ...ch.writer, channel_id: '00000000-0000-4000-8000-000000000000' }
  const s2 = await withTimeout(refusedStatus(base, unknown, 'write'), 10000, 'unknown channel writer')
  check(s2 === 404, `writer on unknown channel: got ${s2}, expected HTTP 404`)
  return "wrong key, the other end's key and unknown channel -> 404"
}

async function caseDupWriterAbort(base, control) {
  const ch = await createChannel(control)
  const rp = nodeRead(base, ch.reader)
  const w1 = new ChannelWriter(base, ch.writer)
  w1.stream.on('error', () => {})
  w1.sendMessage('first writer')
  await waitState(control, ch.channel_id, (s) => s.writer_connected === true && s.reader_connected === true, 'both ends connected')
  const s = await withTimeout(refusedStatus(base, ch.writer, 'write'), 10000, 'second writer')
  check(s === 409, `second writer on a taken end: got ${s}, expected HTTP 409`)
  const { status, text } = await http('DELETE', `${control}/v1/channels/${ch.channel_id}`)
  check(status === 204, `DELETE -> ${status} ${text.slice(0, 200)}, expected 204`)
  const rres = await withTimeout(rp, 10000, 'aborted reader')
  check(rres.closeInfo && rres.closeInfo.code === 1011,
    `aborted reader got close ${JSON.stringify(rres.closeInfo)}, expected 1011 'channel aborted'`)
  check(JSON.stringify(rres.msgs.map(([, m]) => m)) === JSON.stringify(['first writer']),
    `reader messages ${JSON.stringify(rres.msgs)} != ["first writer"]`)
  return `409, then DELETE -> reader close ${JSON.stringify(rres.closeInfo)}`
}

async function caseWriterAbort(base, control) {
  const ch = await createChannel(control)
  const rp = nodeRead(base, ch.reader)
  await waitState(control, ch.channel_id, (s) => s.reader_connected === true, 'reader_connected')
  const data = makePayload(14, MiB + 12345)
  const w = new ChannelWriter(base, ch.writer)
  w.stream.on('error', () => {})
  w.sendMessage('before-abort')
  await writeP(w.stream, data)
  w.stream.destroy() // the SDK's destroy path: ws.terminate(), i.e. TCP gone without a Close
  const rres = await withTimeout(rp, 10000, 'reader after writer abort')
  check(rres.closeInfo && rres.closeInfo.code === 1011 && rres.closeInfo.reason === 'writer disconnected',
    `reader got close ${JSON.stringify(rres.closeInfo)}, expected 1011 'writer disconnected'`)
  check(rres.n === data.length && rres.sha256 === sha(data),
    `reader got ${rres.n} of the ${data.length} bytes written before the drop (sha ok: ${rres.sha256 === sha(data)})`)
  check(JSON.stringify(rres.msgs) === JSON.stringify([[0, 'before-abort']]), `reader messages ${JSON.stringify(rres.msgs)}`)
  return 'all bytes before the drop delivered, then 1011 writer disconnected'
}

// ------------------------------------------------------------------ helper mode (cross-language)

async function helper(spec) {
  try {
    if (spec.role === 'write') {
      const data = readFileSync(spec.data_file)
      const res = await nodeWrite(spec.base, spec.ref, data, spec.messages, { endWith: 'close' })
      const hp = handshakeProblems(res.headers)
      if (hp.length) return { error: hp.join('; ') }
      return { close_code: res.closeInfo?.code, close_ms: res.closeMs }
    }
    if (spec.role === 'read') {
      const res = await nodeRead(spec.base, spec.ref)
      return { n: res.n, sha256: res.sha256, msgs: res.msgs, close_code: res.closeInfo?.code }
    }
    return { error: `unknown role ${spec.role}` }
  } catch (e) {
    return { error: String(e?.message ?? e) }
  }
}

// ------------------------------------------------------------------ main

async function main() {
  const args = process.argv.slice(2)
  if (args[0] === '--helper') {
    // spec JSON comes on stdin (it carries the > 64 KiB text message)
    const chunks = []
    for await (const c of process.stdin) chunks.push(c)
    const res = await withTimeout(helper(JSON.parse(Buffer.concat(chunks).toString('utf8'))), CASE_TIMEOUT * 1000, 'helper')
      .catch((e) => ({ error: String(e?.message ?? e) }))
    await out(JSON.stringify(res) + '\n')
    return res.error ? 1 : 0
  }
  const base = (args[0] ?? process.env.CHANRELAY_WS ?? '').replace(/\/$/, '')
  const control = (args[1] ?? process.env.CHANRELAY_CONTROL ?? '').replace(/\/$/, '')
  if (!base || !control) {
    console.error('usage: node sdk_test.mjs ws://DATA:PORT http://CONTROL:PORT (or CHANRELAY_WS/CHANRELAY_CONTROL)')
    return 2
  }
  let cases = [
    ['reader-first', caseReaderFirst],
    ['writer-first-closed', caseWriterFirstClosed],
    ['writer-first-blocked', caseWriterFirstBlocked],
    ['bad-key-404', caseBadKey],
    ['dup-writer-409+abort', caseDupWriterAbort],
    ['writer-abort-1011', caseWriterAbort],
    ['minted-refs', caseMintedRefs],
  ]
  if (process.env.CHANRELAY_SDK_ONLY) {
    const only = process.env.CHANRELAY_SDK_ONLY.split(',')
    cases = cases.filter(([n]) => only.includes(n))
  }
  if (process.env.CHANRELAY_SDK_SKIP) {
    const skip = process.env.CHANRELAY_SDK_SKIP.split(',')
    cases = cases.filter(([n]) => !skip.includes(n))
  }
  let passed = 0
  let failed = 0
  for (const [name, fn] of cases) {
    const t0 = Date.now()
    try {
      const info = await withTimeout(fn(base, control), CASE_TIMEOUT * 1000, name)
      passed++
      console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(2)}s): ${info}`)
    } catch (e) {
      failed++
      console.log(`FAIL ${name}: ${e instanceof CaseFailure ? '' : `${e?.name ?? 'Error'}: `}${e?.message ?? e}`)
      if (process.env.CHANRELAY_SDK_VERBOSE && !(e instanceof CaseFailure)) console.error(e)
    }
  }
  await out(`sdk-node: ${passed} passed, ${failed} failed\n`)
  return failed ? 1 : 0
}

// process.exit() drops unflushed stdout when it is a pipe: wait for the write first.
const out = (s) => new Promise((resolve) => process.stdout.write(s, () => resolve()))

// A failed case can leave sockets open; exit explicitly instead of waiting for them.
main().then((code) => process.exit(code), async (e) => {
  await out(`FAIL internal: ${e?.stack ?? e}\nsdk-node: 0 passed, 1 failed\n`)
  process.exit(1)
})
