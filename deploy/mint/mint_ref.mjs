// Mint a chanrelay ref pair without calling the relay (Node.js standard library only).
//
// The relay must share `secret` (its `signing_secret`). With `nodeId`, the channel lives on
// that relay of a fleet (the balancer routes `<nodeId>~…` to it).
import { createHmac, randomUUID } from 'node:crypto'

const key = (secret, channelId, direction, expiry) =>
  `s2.${expiry}.` +
  createHmac('sha256', secret).update(`${channelId}.${direction}.${expiry}`).digest('base64url')

export function mintRef(secret, { channelId, ttlS = 300, nodeId, expiry } = {}) {
  let cid = channelId ?? randomUUID()
  if (nodeId) cid = `${nodeId}~${cid}`
  const exp = expiry ?? Math.floor(Date.now() / 1000) + ttlS
  const ref = (d) => ({ channel_id: cid, access_key: key(secret, cid, d, exp), direction: d })
  return { channel_id: cid, writer: ref('write'), reader: ref('read'), expires_at: exp }
}
